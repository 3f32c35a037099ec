"""Preprocessing a corpus of millions of pairs in bounded memory, and training on it.

Writes a generated corpus of `--pairs` (5,000,000) toy pairs (data/toy.py, drawn without
the distinctness check, so sentences repeat), runs `lstmmt preprocess` on it and on a
small corpus of `--small` pairs, then `lstmmt train --max-steps` on both, each as its own
process, and reports wall time and peak resident memory (the command's own, from
common.MeasuredProcess). Memory goals: preprocess stays under 2 GB, and training memory
does not grow with the corpus: training reads it a window of `train.window_sentences` at a
time, so the large corpus is also trained with a window as large as the small corpus, which
should need the small corpus's memory (`train_rss_ratio_same_window`).

    python benchmarks/preprocess_scale.py > scale.json
    python benchmarks/preprocess_scale.py --reuse      # train only, on runs preprocessed before
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import toy
from common import CACHE, MeasuredProcess, emit, exit_on_sigterm, loadavg, log, machine

SETTINGS = ["--set", "tokenizer.vocab_size=500", "--set", "data.max_ratio=10"]
TRAIN = ["--max-steps", "30", "--set", "train.valid_every=1000000", "--set", "train.log_every=10",
         "--set", "model.embed_size=64", "--set", "model.hidden_size=128", "--set", "model.encoder_layers=1",
         "--device", "cpu", "--restart"]


def write_corpus(folder: Path, pairs: int, seed: int) -> None:
    """FOLDER/train.{en,de} with `pairs` pairs and FOLDER/valid.{en,de} with 200, streamed to disk."""
    if (folder / "done").exists() and (folder / "done").read_text() == str(pairs):
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, count in (("train", pairs), ("valid", 200)):
        with (open(folder / f"{split}.en", "w", encoding="utf-8") as en,
              open(folder / f"{split}.de", "w", encoding="utf-8") as de):
            for i in range(count):
                source, target = toy.sample_pair(rng)
                en.write(source + "\n")
                de.write(target + "\n")
                if i and i % 1_000_000 == 0:
                    log(f"{folder.name}: {i:,} pairs written")
    (folder / "done").write_text(str(pairs))


def measured(command: list[str]) -> dict[str, float]:
    """Run a command; its own wall time and peak resident memory (common.MeasuredProcess)."""
    log(" ".join(command))
    run = MeasuredProcess(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = run.process.stderr.read()
    usage = run.wait()
    if usage["exit_code"] != 0:
        sys.exit(f"failed: {' '.join(command)}\n{stderr.decode(errors='replace')[-3000:]}")
    return {"seconds": round(usage["wall_s"], 1), "peak_rss_mb": round(usage["peak_rss_mb"], 1)}


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5_000_000, help="pairs in the large corpus")
    parser.add_argument("--small", type=int, default=50_000, help="pairs in the small corpus")
    parser.add_argument("--reuse", action="store_true",
                        help="skip preprocessing where an earlier run of this script did it")
    args = parser.parse_args()
    result: dict = {"benchmark": "preprocess_scale", "machine": machine(), "loadavg_before": loadavg()}
    lstmmt = [sys.executable, "-m", "lstmmt"]
    for name, pairs in (("small", args.small), ("large", args.pairs)):
        corpus, run = CACHE / f"scale-corpus-{pairs}", CACHE / f"scale-run-{pairs}"
        start = time.perf_counter()
        write_corpus(corpus, pairs, seed=pairs)
        corpus_bytes = sum(f.stat().st_size for f in corpus.glob("train.*"))
        entry: dict = {"pairs": pairs, "corpus_mb": round(corpus_bytes / 2**20, 1),
                       "generate_seconds": round(time.perf_counter() - start, 1)}
        if not (args.reuse and (run / "data" / "train.tgt.offsets.npy").exists()):
            entry["preprocess"] = measured([*lstmmt, "preprocess", str(run), "--src-lang", "en", "--tgt-lang", "de",
                                            "--train", str(corpus / "train"), "--valid", str(corpus / "valid"),
                                            "--force", *SETTINGS])
            entry["preprocess"]["pairs_per_s"] = round(pairs / entry["preprocess"]["seconds"])
        entry["train_30_steps"] = measured([*lstmmt, "train", str(run), *TRAIN])
        if name == "large":
            entry["train_30_steps_small_window"] = measured(
                [*lstmmt, "train", str(run), *TRAIN, "--set", f"train.window_sentences={args.small}"])
        result[name] = entry
        log(f"{name}: {entry}")
    result["train_rss_ratio_large_to_small"] = round(
        result["large"]["train_30_steps"]["peak_rss_mb"] / result["small"]["train_30_steps"]["peak_rss_mb"], 3)
    large, small = result["large"]["train_30_steps_small_window"], result["small"]["train_30_steps"]
    result["train_rss_ratio_same_window"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
    if "preprocess" in result["large"]:
        result["preprocess_under_2gb"] = result["large"]["preprocess"]["peak_rss_mb"] < 2048
    result["loadavg_after"] = loadavg()
    emit(result)


if __name__ == "__main__":
    main()
