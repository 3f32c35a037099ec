#!/usr/bin/env python3
"""Peak memory of `lstmmt translate` as a stdin/stdout filter must not grow with input length.

translate reads its input in chunks of 5,000 lines, so streaming 200,000 lines should need
no more memory than streaming 20,000. This script pipes N generated toy English lines
through `python -m lstmmt translate RUN` in a subprocess for each size, reads that
command's own peak RSS (common.MeasuredProcess), and prints one JSON object per size, then
the ratio of the largest size's peak to the smallest's:

    {"lines": 20000, "peak_rss_mb": ..., "seconds": ..., "output_lines": 20000}
    {"lines": 200000, "peak_rss_mb": ..., "seconds": ..., "output_lines": 200000}
    {"peak_rss_ratio": ...}

It exits 1 when a size loses or adds output lines, or the ratio exceeds --max-ratio.

Without --run it first builds a tiny run (300 toy pairs, vocabulary 100, hidden size 32,
30 training steps) in a temporary folder: the model translates badly, but memory is what
is measured. translate runs with one torch thread by default (--threads): a small model
gains nothing from more, and on shared cores OpenMP threads spend their time waiting for
each other. Linux only (ru_maxrss in KiB).

What to expect: reading all input at once (no chunks) gives a ratio of about 1.9; chunked
reading about 1.07, the rest being oneDNN's primitive cache, which keeps one entry per new
batch shape up to a fixed capacity (with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 the ratio is 1.01).

    python benchmarks/stream_memory.py [--run RUN] [--sizes 20000 200000] [--beam 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import toy
from common import MeasuredProcess

TINY_RUN = [
    "--set", "tokenizer.vocab_size=100", "--set", "model.embed_size=16", "--set", "model.hidden_size=32",
    "--set", "model.encoder_layers=1", "--set", "train.batch_tokens=1000", "--set", "train.valid_every=30",
    "--set", "data.max_ratio=10",
]


def build_tiny_run(folder: Path) -> Path:
    """Preprocess 300 toy pairs and train 30 steps, through the CLI as a user would."""
    corpus = folder / "corpus"
    toy.write(toy.generate(300, 20, 0, seed=1), corpus)
    run = folder / "run"
    lstmmt(["preprocess", str(run), "--src-lang", "en", "--tgt-lang", "de", "--train", str(corpus / "train"),
            "--valid", str(corpus / "valid"), *TINY_RUN])
    lstmmt(["train", str(run), "--max-steps", "30"])
    return run


def lstmmt(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "lstmmt", *args], check=True, stdout=subprocess.DEVNULL)


def toy_lines(count: int, seed: int) -> Iterator[bytes]:
    """`count` toy English lines, generated as they are written so this script's memory stays flat too."""
    rng = random.Random(seed)
    for _ in range(count):
        yield toy.sample_pair(rng)[0].encode("utf-8") + b"\n"


def feed(pipe: IO[bytes], lines: Iterator[bytes]) -> None:
    """Write the lines in blocks of 1,000, then close the pipe so translate sees end of input."""
    try:
        block: list[bytes] = []
        for line in lines:
            block.append(line)
            if len(block) == 1000:
                pipe.write(b"".join(block))
                block = []
        pipe.write(b"".join(block))
    except BrokenPipeError:
        pass  # translate died; its exit status and stderr tell why
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


def measure(run: Path, lines: int, beam: int, threads: int, seed: int) -> dict[str, float | int]:
    """Stream `lines` lines through translate; its peak RSS, wall time and output line count."""
    with tempfile.TemporaryFile() as stderr_file:
        measured = MeasuredProcess([sys.executable, "-m", "lstmmt", "translate", str(run), "--beam", str(beam)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
                                   env=os.environ | {"OMP_NUM_THREADS": str(threads)})
        process = measured.process
        feeder = threading.Thread(target=feed, args=(process.stdin, toy_lines(lines, seed)))
        feeder.start()
        output_lines = 0
        while block := process.stdout.read(1 << 16):
            output_lines += block.count(b"\n")
        feeder.join()
        process.stdout.close()
        usage = measured.wait()
        if usage["exit_code"] != 0:
            stderr_file.seek(0)
            message = stderr_file.read().decode("utf-8", errors="replace")
            sys.exit(f"translate exited with status {usage['exit_code']}:\n{message}")
    return {"lines": lines, "peak_rss_mb": round(usage["peak_rss_mb"], 1), "seconds": round(usage["wall_s"], 1),
            "output_lines": output_lines}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: build a tiny one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="input line counts")
    parser.add_argument("--beam", type=int, default=1, help="beam size (default 1, greedy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of translate (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated input lines")
    parser.add_argument("--max-ratio", type=float, default=1.2,
                        help="fail when the largest size's peak RSS exceeds the smallest's by more than this factor")
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)

    with tempfile.TemporaryDirectory(prefix="stream_memory.") as scratch:
        run = args.run or build_tiny_run(Path(scratch))
        results = []
        for lines in sizes:
            results.append(measure(run, lines, args.beam, args.threads, args.seed))
            print(json.dumps(results[-1]), flush=True)
    ratio = round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 3)
    print(json.dumps({"peak_rss_ratio": ratio}))
    lost = [r["lines"] for r in results if r["output_lines"] != r["lines"]]
    if lost:
        sys.exit(f"output line count differs from input line count for sizes {lost}")
    if ratio > args.max_ratio:
        sys.exit(f"peak RSS grew {ratio}x from {sizes[0]:,} to {sizes[-1]:,} lines (limit {args.max_ratio}x)")


if __name__ == "__main__":
    main()
