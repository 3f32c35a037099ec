"""Helpers shared by the benchmark scripts: paths, machine facts, memory, the cached run directory.

Every benchmark prints one JSON object to stdout and its progress to stderr, so
`python benchmarks/X.py ... > result.json` keeps a clean record.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstmmt.device import cpu_flags, cpu_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "recipes" / "multi30k" / "corpus"
"""Where `make -C recipes/multi30k corpus` downloads Multi30k; --data-dir names another folder."""
CACHE = REPO / "benchmarks" / ".cache"
"""Git-ignored (benchmarks/.gitignore): preprocessed runs, trained models, peer virtualenvs."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally`/`except` blocks stop child processes."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The one machine-readable line on stdout."""
    print(json.dumps(result, indent=2, sort_keys=False), flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(device: str | None = None) -> dict[str, Any]:
    """Facts needed to compare two runs of a benchmark."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_1_5_15": loadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device and device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


# -- memory ---------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM) to its current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start (or since reset_peak_rss), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- subprocesses ---------------------------------------------------------------------------


def thread_env(threads: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# The measured command is started by this small launcher, not by the benchmark itself: Linux
# starts a child's ru_maxrss at the high-water mark of the process it was forked from (about
# 220 MiB for a benchmark that has imported torch), so a direct child could never report less.
# The launcher reports on file descriptor argv[1] the command's wait status, wall and CPU
# seconds, peak RSS and when it was started (CLOCK_MONOTONIC, the same in every process).
_LAUNCHER = """
import json, os, signal, subprocess, sys, time
started = time.clock_gettime(time.CLOCK_MONOTONIC)
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.kill())
while True:
    try:
        _, status, usage = os.wait4(child.pid, 0)
        break
    except KeyboardInterrupt:
        child.kill()
os.write(int(sys.argv[1]), json.dumps({
    "status": status, "started": started, "wall_s": time.clock_gettime(time.CLOCK_MONOTONIC) - started,
    "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}).encode())
"""


class MeasuredProcess:
    """A command run for its own wall time, CPU time and peak resident memory (Linux).

    `process` is the launcher's Popen: its stdin, stdout and stderr are the command's."""

    def __init__(self, cmd: Sequence[str], **popen_kwargs: Any) -> None:
        self._report, write = os.pipe()
        try:
            self.process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(write), *map(str, cmd)],
                                            pass_fds=(write,), **popen_kwargs)
        finally:
            os.close(write)

    def wait(self) -> dict[str, Any]:
        """Wait for the command: {"exit_code", "started", "wall_s", "cpu_s", "peak_rss_mb"};
        `started` is a time.CLOCK_MONOTONIC reading. Interrupted, it stops the command first."""
        try:
            self.process.wait()
        except BaseException:
            self.process.terminate()  # the launcher kills the command, then exits
            self.process.wait()
            raise
        with open(self._report, "rb") as report:
            data = report.read()
        if not data:
            raise RuntimeError(f"the measuring launcher exited {self.process.returncode} without a report")
        result = json.loads(data)
        result["exit_code"] = os.waitstatus_to_exitcode(result.pop("status"))
        return result


def run_measured(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin_path: Path | None = None,
                 stdout_path: Path | None = None) -> dict[str, Any]:
    """Run a command to completion; stdout/stderr to files. Returns the command's own wall and
    CPU seconds and peak RSS (see MeasuredProcess), and raises with the log tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as err, open(stdout_path or os.devnull, "w") as out, \
            open(stdin_path or os.devnull, "rb") as inp:
        usage = MeasuredProcess(cmd, stdin=inp, stdout=out if stdout_path else err, stderr=err, env=env,
                                cwd=cwd).wait()
    if usage["exit_code"] != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {usage['exit_code']}; {log_path}:\n" + "\n".join(tail))
    return {"wall_s": round(usage["wall_s"], 3), "cpu_s": round(usage["cpu_s"], 3),
            "peak_rss_mb": round(usage["peak_rss_mb"], 1)}


# -- the benchmark run directory ------------------------------------------------------------


def lstmmt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lstmmt", *args]


def ensure_preprocessed(run_dir: Path, data_dir: Path, vocab_size: int = 8000) -> Path:
    """Preprocess Multi30k en-de into run_dir once (train, val, test_2016_flickr); reused after."""
    if (run_dir / "data" / "meta.json").exists():
        log(f"reusing preprocessed {run_dir}")
        return run_dir
    for name in ("train", "val", "test_2016_flickr"):
        for lang in ("en", "de"):
            if not (data_dir / f"{name}.{lang}.gz").exists() and not (data_dir / f"{name}.{lang}").exists():
                raise SystemExit(f"missing {data_dir}/{name}.{lang}[.gz]: pass --data-dir, or download Multi30k with "
                                 "`make -C recipes/multi30k corpus`")
    log(f"preprocessing {data_dir} into {run_dir} (joint unigram, vocab {vocab_size})")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        lstmmt_cmd("preprocess", str(run_dir), "--src-lang", "en", "--tgt-lang", "de",
                   "--train", str(data_dir / "train"), "--valid", str(data_dir / "val"),
                   "--test", str(data_dir / "test_2016_flickr"), "--vocab-size", str(vocab_size), "--force"),
        check=True, stdout=sys.stderr,
    )
    return run_dir


def read_test_source(data_dir: Path) -> list[str]:
    import gzip

    plain = data_dir / "test_2016_flickr.en"
    if plain.exists():
        return plain.read_text(encoding="utf-8").splitlines()
    with gzip.open(data_dir / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


# -- compute efficiency ---------------------------------------------------------------------


def flops_per_tgt_token(model: Any, tgt_vocab: int, src_per_tgt: float, attended_per_tgt: float) -> float:
    """Training FLOPs (forward and backward) per target token of lstmmt's model, from its config.

    One multiply-add is 2 FLOPs; only matrix products count. Forward, per token:
      * encoder, per source token: each layer and direction an LSTM of h = hidden_size/2 units
        with `in` inputs (embed_size in the first layer, hidden_size above): 2*4h*(in + h);
        plus the attention keys (luong, bahdanau): 2*H*H per source token;
      * decoder, per target token: each layer an LSTM of H units, 2*4H*(in + H), `in` being
        embed_size (+ H with input feeding) in the first layer, H above; attention scores and
        context, 2*H + 2*H per attended source position (bahdanau: query projection 2*H*H and
        energy 2*H per position instead of the score product); combine 2*(2H)*H; output layer
        2*H*V (tied embeddings with H != E: 2*H*E + 2*E*V).
    Embedding look-ups, element-wise ops, softmax, the loss and the bridge (once per sentence)
    are free. Source-side terms are scaled by `src_per_tgt` (source tokens per target token)
    and attention by `attended_per_tgt` (real source positions attended per target token: the
    mean source length, weighted by target length). Backward costs twice the forward, so the
    total is 3x the forward.
    """
    E, H, V = model.embed_size, model.hidden_size, tgt_vocab
    h = H // 2

    def lstm(inputs: int, units: int) -> int:
        return 2 * 4 * units * (inputs + units)

    encoder = sum(2 * lstm(E if layer == 0 else H, h) for layer in range(model.encoder_layers))
    if model.attention != "dot":
        encoder += 2 * H * H  # keys
    first_input = E + (H if model.input_feeding else 0)
    decoder = sum(lstm(first_input if layer == 0 else H, H) for layer in range(model.decoder_layers))
    if model.attention == "bahdanau":
        attention = 2 * H * H + (2 * H + 2 * H) * attended_per_tgt
    else:
        attention = (2 * H + 2 * H) * attended_per_tgt
    combine = 2 * (2 * H) * H
    if model.tie_embeddings:
        output = (2 * H * E if H != E else 0) + 2 * E * V
    else:
        output = 2 * H * V
    forward = encoder * src_per_tgt + decoder + attention + combine + output
    return 3.0 * forward


def peak_gflops(device: Any, dtype: Any, size: int, repeats: int = 5) -> float:
    """The best GFLOP/s of a size x size matmul in `dtype` on `device` over `repeats` timed runs
    (after one untimed), with the backend's current settings (TF32 where enabled)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def efficiency(flops_per_token: float, tgt_tokens_per_s: float, precision: str, device: Any,
               size: int, repeats: int = 5) -> dict[str, Any]:
    """Achieved GFLOP/s against the device's measured peak for the precision that ran. The bf16
    peak is measured only where bf16 runs natively (lstmmt.device.bf16_problem): emulated bf16
    matmuls on an AVX2 CPU run at about 1% of fp32, minutes for one 2048 matmul."""
    import torch

    from lstmmt.device import bf16_problem

    achieved = flops_per_token * tgt_tokens_per_s / 1e9
    no_bf16 = bf16_problem(device)
    peaks = {"fp32": peak_gflops(device, torch.float32, size, repeats),
             "bf16": None if no_bf16 else peak_gflops(device, torch.bfloat16, size, repeats)}
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    return {
        "flops_per_tgt_token": round(flops_per_token),
        "achieved_gflops": round(achieved, 2),
        "peak_gflops_fp32": round(peaks["fp32"], 1),
        "peak_gflops_bf16": peaks["bf16"] and round(peaks["bf16"], 1),
        "peak_gemm": {"size": size, "repeats": repeats, "against": precision, "bf16_not_measured": no_bf16 or None,
                      "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)},
        "efficiency": round(achieved / peak, 4) if peak else None,
    }


TRANSLATE_VARIANTS = {"fp32": [], "shortlist": ["--shortlist"], "int8": ["--quantize", "int8"],
                      "shortlist+int8": ["--shortlist", "--quantize", "int8"]}
"""lstmmt translation variants the benchmarks measure: their extra `lstmmt translate` options."""


def ensure_shortlist(run: Path, threads: int | None) -> dict[str, Any]:
    """RUN/shortlist.npz's settings, writing it first (`lstmmt shortlist`, defaults, untimed) when the run has none."""
    import numpy as np

    path = run / "shortlist.npz"
    if not path.exists():
        log(f"writing {path} (lstmmt shortlist, default settings; untimed)")
        run_measured(lstmmt_cmd("shortlist", str(run)), CACHE / "logs" / "shortlist.err", env=thread_env(threads))
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))
