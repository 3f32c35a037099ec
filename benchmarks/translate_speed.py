"""Translation throughput of lstmmt: sentences/s, target tokens/s, peak memory, time to first line.

Input: test_2016_flickr.en repeated to --lines lines (10,000 by default; 100,000
amortises start-up further). For each beam size the timed command is the real one,

    python -m lstmmt translate RUN -i INPUT -o - --beam K --device D

run as a subprocess whose stdout is read as it streams: the time to the first output line
and to the last are taken from the moment the process is started, so they include Python
start-up and model loading (measured on its own with a one-line input and reported as
`startup_s`). Peak memory is the command's own peak RSS (common.MeasuredProcess). Target
tokens are counted by re-encoding the output lines with the run's SentencePiece model (+1
for EOS each), which equals the generated length unless the model emitted a non-canonical
segmentation.

With --mode inprocess the same translate_stream runs inside this process instead (and on
a GPU reports torch.cuda.max_memory_allocated); first-line time then excludes start-up.

With --latency N the command runs as an interactive filter instead: after one warm-up
line, N lines (of the input, in order) are written into its stdin one at a time, each
after the previous answer arrived plus a --pause, and the time from writing a line to
reading its translation is reported (median, max). translate must answer a line while
its stdin stays open, so a version that waits for more input times out (--latency-timeout).

With --variants each beam size is measured once per variant, in one run:
`fp32` (the full vocabulary, the default row), `shortlist` (translate --shortlist),
`int8` (translate --quantize int8) and `shortlist+int8`. Rows other than fp32 go under
"variants" in the JSON; every row has BLEU against the input's references (the repeated
test_2016_flickr.de, or --ref FILE), so speed and quality sit side by side. A run without
RUN/shortlist.npz gets one first (`lstmmt shortlist RUN`, untimed, default settings); to
measure other settings, run `lstmmt shortlist RUN --per-source K --frequent N` before. The
shortlist's settings are recorded in the JSON. Start-up is measured per variant (int8
quantises the model at load time).

Without --run, a model of the comparison size (train_speed.py) is trained for --train-steps
steps into benchmarks/.cache (once; reused after): quality does not matter for speed,
but output lengths do, so a slightly trained model is better than a random one.

    python benchmarks/translate_speed.py                          # trains a quick model once
    python benchmarks/translate_speed.py --run runs/en-de --lines 100000 --beams 5
    python benchmarks/translate_speed.py --profile 1              # + torch profiler of one beam-5 batch
    python benchmarks/translate_speed.py --run runs/en-de --latency 20 --beams 5   # pipe latency
    python benchmarks/translate_speed.py --beams 5 --variants fp32,shortlist,int8,shortlist+int8
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    DEFAULT_DATA,
    TRANSLATE_VARIANTS,
    MeasuredProcess,
    emit,
    ensure_preprocessed,
    ensure_shortlist,
    exit_on_sigterm,
    log,
    lstmmt_cmd,
    machine,
    peak_rss_mb,
    read_test_source,
    reset_peak_rss,
    run_measured,
    thread_env,
)

QUICK_MODEL = [
    "model.embed_size=256", "model.hidden_size=512", "model.encoder_layers=2", "model.decoder_layers=1",
    "model.attention=luong", "train.batch_tokens=4096", "train.lr_schedule=constant", "train.warmup_steps=50",
]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None,
                    help="trained run directory (default: train a quick one in benchmarks/.cache)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--lines", type=int, default=10_000, help="input lines (test_2016_flickr.en repeated)")
    ap.add_argument("--beams", default="1,5", help="comma-separated beam sizes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP/MKL threads for the translate process (0: torch's default)")
    ap.add_argument("--checkpoint", default="last", help="best, last, averaged or a path")
    ap.add_argument("--batch-tokens", type=int, default=0,
                    help="translate --batch-tokens (0: the run's decode.batch_tokens)")
    ap.add_argument("--mode", choices=["cli", "inprocess"], default="cli")
    ap.add_argument("--train-steps", type=int, default=200, help="steps for the quick model when --run is not given")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the quick model")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="profile K batches of beam-5 search in-process and report the top ops")
    ap.add_argument("--latency", type=int, default=0, metavar="N",
                    help="measure pipe latency over N lines instead of throughput")
    ap.add_argument("--pause", type=float, default=0.5,
                    help="with --latency: seconds between an answer and the next line")
    ap.add_argument("--latency-timeout", type=float, default=60.0,
                    help="with --latency: give up on a line after this many seconds")
    ap.add_argument("--variants", default="fp32",
                    help=f"comma-separated rows per beam: {', '.join(TRANSLATE_VARIANTS)}")
    ap.add_argument("--ref", type=Path, default=None,
                    help="references of the input for BLEU (default: test_2016_flickr.de of --data-dir)")
    args = ap.parse_args()
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in TRANSLATE_VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(TRANSLATE_VARIANTS)}")
    return args


def decode_options(variant: str) -> dict[str, Any]:
    """The variant as Translator.load keywords (in-process mode)."""
    parts = variant.split("+")
    return {"shortlist": "shortlist" in parts, "quantize": "int8" if "int8" in parts else "none"}


def read_references(args: argparse.Namespace, lines: int) -> list[str] | None:
    """The references of the repeated input, or None when there are none to read."""
    import gzip

    path = args.ref
    if path is None:
        for candidate in (args.data_dir / "test_2016_flickr.de", args.data_dir / "test_2016_flickr.de.gz"):
            if candidate.exists():
                path = candidate
                break
    if path is None or not Path(path).exists():
        return None
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        refs = handle.read().splitlines()
    return [refs[i % len(refs)] for i in range(lines)]


def quick_model(args: argparse.Namespace) -> Path:
    """A run trained for a few hundred steps on Multi30k, made once under benchmarks/.cache."""
    base = ensure_preprocessed(CACHE / "m30k-8k", args.data_dir)
    tag = "-".join(s.replace("model.", "").replace("=", "") for s in args.sets) or "default"
    run = CACHE / f"quick-{tag}-{args.train_steps}"
    if (run / "train.json").exists():  # lstmmt writes it only when training reached its limit
        log(f"reusing trained {run}")
        return run
    if run.exists():
        shutil.rmtree(run)  # an interrupted quick training: start it again
    copy_preprocessed(base, run)
    log(f"training a quick model into {run} ({args.train_steps} steps; once)")
    sets = QUICK_MODEL + [f"train.valid_every={args.train_steps}", "train.log_every=10"] + args.sets
    cmd = lstmmt_cmd("train", str(run), "--max-steps", str(args.train_steps), "--restart")
    for s in sets:
        cmd += ["--set", s]
    run_measured(cmd, CACHE / "logs" / f"{run.name}.train.log", env=thread_env(args.threads))
    return run


def copy_preprocessed(base: Path, run: Path) -> None:
    """A new run directory sharing base's preprocessed data (config, tokenizer, data; no checkpoints)."""
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base / "config.yaml", run / "config.yaml")
    for folder in ("tokenizer", "data"):
        if not (run / folder).exists():
            shutil.copytree(base / folder, run / folder)


def make_input(data_dir: Path, lines: int) -> Path:
    source = read_test_source(data_dir)
    path = CACHE / "inputs" / f"test_2016_flickr.x{lines}.en"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        repeated = [source[i % len(source)] for i in range(lines)]
        path.write_text("\n".join(repeated) + "\n", encoding="utf-8")
    return path


def count_tokens(run: Path, lines: list[str]) -> int:
    import sentencepiece as spm

    tokenizer = run / "tokenizer"
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / ("spm.model" if (tokenizer / "spm.model").exists()
                                                                else "tgt.model")))
    return sum(len(ids) + 1 for ids in sp.encode(lines))


def translate_cli(run: Path, input_path: Path, beam: int, args: argparse.Namespace,
                  variant: str = "fp32") -> tuple[dict[str, Any], list[str]]:
    cmd = lstmmt_cmd("translate", str(run), "-i", str(input_path), "-o", "-", "--beam", str(beam),
                     "--device", args.device, "--checkpoint", args.checkpoint, *TRANSLATE_VARIANTS[variant])
    if args.batch_tokens:
        cmd += ["--batch-tokens", str(args.batch_tokens)]
    err_path = CACHE / "logs" / f"translate-beam{beam}-{variant}.err"
    err_path.parent.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    first: float | None = None  # a CLOCK_MONOTONIC reading, like the launcher's `started`
    with open(err_path, "w") as err:
        measured = MeasuredProcess(cmd, stdout=subprocess.PIPE, stderr=err, env=thread_env(args.threads))
        assert measured.process.stdout is not None
        for raw in measured.process.stdout:
            if first is None:
                first = time.clock_gettime(time.CLOCK_MONOTONIC)
            out.append(raw.decode("utf-8").rstrip("\n"))
        usage = measured.wait()
    if usage["exit_code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {err_path}:\n{err_path.read_text()[-2000:]}")
    wall = usage["wall_s"]
    return {"wall_s": round(wall, 3), "first_line_s": round(first - usage["started"] if first else wall, 3),
            "cpu_s": round(usage["cpu_s"], 2), "peak_rss_mb": round(usage["peak_rss_mb"], 1)}, out


class _Sink(io.StringIO):
    """Output that remembers when its first line was written."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start, self.first = start, None

    def write(self, text: str) -> int:
        if self.first is None and text:
            self.first = time.perf_counter() - self.start
        return super().write(text)


def translate_inprocess(run_path: Path, input_path: Path, beam: int, args: argparse.Namespace,
                        variant: str = "fp32") -> tuple[dict[str, Any], list[str]]:
    import torch

    from lstmmt import Translator
    from lstmmt.linestream import translate_stream

    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(run_path, args.checkpoint, args.device, beam_size=beam, **batch_tokens(args),
                                 **decode_options(variant))
    device = translator.device
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    sink = _Sink(start)
    with open(input_path, "rb") as source:
        translate_stream(translator, source, sink)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    figures: dict[str, Any] = {"wall_s": round(wall, 3), "first_line_s": round(sink.first or wall, 3),
                               "peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures, sink.getvalue().splitlines()


def batch_tokens(args: argparse.Namespace) -> dict[str, int]:
    """--batch-tokens as a decode override (none: the run's decode.batch_tokens)."""
    return {"batch_tokens": args.batch_tokens} if args.batch_tokens else {}


def pipe_latency(run: Path, input_path: Path, beam: int, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds from writing a line into translate's stdin to reading its translation, per line."""
    cmd = lstmmt_cmd("translate", str(run), "--beam", str(beam), "--device", args.device,
                     "--checkpoint", args.checkpoint)
    lines = input_path.read_text(encoding="utf-8").splitlines()[: args.latency + 1]
    err_path = CACHE / "logs" / f"latency-beam{beam}.err"
    err_path.parent.mkdir(parents=True, exist_ok=True)
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                env=thread_env(args.threads))
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # The first line is a warm-up: its answer waits for start-up and model loading too.
            seconds = [answer_seconds(proc, lines[0], 0.0, max(args.latency_timeout, 600.0))]
            seconds += [answer_seconds(proc, line, args.pause, args.latency_timeout) for line in lines[1:]]
        finally:
            proc.kill()
            proc.wait()
    latencies = sorted(seconds[1:])
    return {"lines": len(latencies), "pause_s": args.pause, "first_line_with_startup_s": round(seconds[0], 3),
            "median_s": round(latencies[len(latencies) // 2], 3), "max_s": round(latencies[-1], 3)}


def answer_seconds(proc: subprocess.Popen, line: str, pause: float, timeout: float) -> float:
    """After `pause` seconds, write one line and wait for one output line; the seconds in between."""
    import select

    time.sleep(pause)
    start = time.perf_counter()
    proc.stdin.write((line + "\n").encode("utf-8"))
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise SystemExit(f"no answer within {timeout:.0f}s to a line written into an open pipe "
                         "(translate waits for more input)")
    proc.stdout.readline()
    return time.perf_counter() - start


def startup_seconds(run: Path, args: argparse.Namespace, variant: str = "fp32") -> float:
    """Wall time of the translate command on a one-line input: interpreter, imports, model load
    (and for int8 its quantisation, for a shortlist reading it)."""
    one = CACHE / "inputs" / "one_line.en"
    one.parent.mkdir(parents=True, exist_ok=True)
    one.write_text("A man is riding a bicycle.\n", encoding="utf-8")
    cmd = lstmmt_cmd("translate", str(run), "-i", str(one), "-o", "-", "--beam", "1", "--device", args.device,
                     "--checkpoint", args.checkpoint, *TRANSLATE_VARIANTS[variant])
    return run_measured(cmd, CACHE / "logs" / f"startup-{variant}.err", env=thread_env(args.threads))["wall_s"]


def profile_beam(run_path: Path, input_path: Path, beam: int, batches: int,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """Top ops by self CPU time over `batches` batches of beam search (in-process)."""
    import numpy as np
    from torch.profiler import ProfilerActivity, profile
    from train_speed import top_ops

    from lstmmt import Translator
    from lstmmt.batching import token_batches
    from lstmmt.device import default_batch_tokens

    translator = Translator.load(run_path, args.checkpoint, args.device, beam_size=beam, **batch_tokens(args))
    device = translator.device
    lines = input_path.read_text(encoding="utf-8").splitlines()[:1000]
    sentences = [np.asarray(ids, dtype=np.int32) for ids in translator.tokenizer.encode_src(lines)]
    lengths = np.array([len(s) + 1 for s in sentences])
    # None: the device's default
    budget = translator.decode.batch_tokens or default_batch_tokens(device, training=False)
    chosen = token_batches(np.argsort(lengths, kind="stable"), lengths, max(1, budget // beam))
    chosen = chosen[len(chosen) // 2 : len(chosen) // 2 + batches]  # middle-length batches
    translator.search([sentences[i] for i in chosen[0]])  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for indices in chosen:
            translator.search([sentences[i] for i in indices])  # one batch: the budget cut them
    log(f"profiled {len(chosen)} batch(es) of {len(chosen[0])} sentences, beam {beam}, "
        f"in {time.perf_counter() - start:.2f}s")
    return top_ops(prof, len(chosen), device, 15)


def measure(run: Path, input_path: Path, beam: int, variant: str, source_lines: list[str], references: list[str] | None,
            startup: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """One row: translate the input with this beam and variant; speed, memory and (with references) BLEU."""
    log(f"beam {beam}, {variant}: translating {len(source_lines):,} lines ({args.mode})")
    load = machine()["loadavg_1_5_15"]
    translate = translate_cli if args.mode == "cli" else translate_inprocess
    figures, output = translate(run, input_path, beam, args, variant)
    if len(output) != len(source_lines):
        raise SystemExit(f"beam {beam}, {variant}: {len(output)} output lines for {len(source_lines)} input lines")
    tgt_tokens = count_tokens(run, output)
    wall = figures["wall_s"]
    entry = {
        **figures,
        "loadavg_before": load,
        "sentences_per_s": round(len(output) / wall, 2),
        "tgt_tokens_per_s": round(tgt_tokens / wall, 1),
        "tgt_tokens": tgt_tokens,
        "mean_output_tokens": round(tgt_tokens / len(output), 2),
    }
    if startup is not None:
        entry["startup_s"] = startup
        if wall > startup:
            entry["sentences_per_s_after_startup"] = round(len(output) / (wall - startup), 2)
    if references is not None:
        import sacrebleu

        entry["bleu"] = round(sacrebleu.corpus_bleu(output, [references]).score, 2)
    log(f"beam {beam}, {variant}: {entry['sentences_per_s']:.1f} sentences/s, "
        f"{entry['tgt_tokens_per_s']:.0f} tokens/s, "
        f"first line after {entry['first_line_s']:.2f}s, peak RSS {entry['peak_rss_mb']:.0f} MiB"
        + (f", BLEU {entry['bleu']:.2f}" if "bleu" in entry else ""))
    return entry


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    run = args.run if args.run is not None else quick_model(args)
    input_path = make_input(args.data_dir, args.lines)
    beams = [int(b) for b in args.beams.split(",")]
    source_lines = input_path.read_text(encoding="utf-8").splitlines()
    src_tokens = count_tokens(run, source_lines)
    result: dict[str, Any] = {
        "benchmark": "translate_speed",
        "mode": args.mode,
        "run": str(run),
        "checkpoint": args.checkpoint,
        "input": str(input_path),
        "lines": len(source_lines),
        "src_tokens": src_tokens,
        "machine": machine(args.device),
        "beams": {},
    }
    if args.latency:
        result["latency"] = {}
        for beam in beams:
            result["latency"][str(beam)] = entry = pipe_latency(run, input_path, beam, args)
            log(f"beam {beam}: pipe latency median {entry['median_s']:.3f}s, max {entry['max_s']:.3f}s "
                f"over {entry['lines']} lines")
        emit(result)
        return
    references = read_references(args, len(source_lines))
    if any("shortlist" in v for v in args.variants):
        result["shortlist"] = ensure_shortlist(run, args.threads)
    startup: dict[str, float] = {}
    if args.mode == "cli":
        for variant in args.variants:
            startup[variant] = startup_seconds(run, args, variant)
            log(f"start-up (one-line translate, {variant}): {startup[variant]:.2f}s")
        result["startup_s"] = startup.get("fp32", next(iter(startup.values())))
    for beam in beams:
        for variant in args.variants:
            entry = measure(run, input_path, beam, variant, source_lines, references, startup.get(variant), args)
            rows = result["beams"] if variant == "fp32" else result.setdefault("variants", {}).setdefault(variant, {})
            rows[str(beam)] = entry
    if args.profile:
        result["profile_beam5_top_ops"] = profile_beam(run, input_path, 5, args.profile, args)
    result["loadavg_after"] = machine()["loadavg_1_5_15"]
    emit(result)


if __name__ == "__main__":
    main()
