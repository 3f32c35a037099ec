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
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multi30k"
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The instruction-set flags that matter for torch CPU kernels."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni"})
    except OSError:
        pass
    return []


def machine(device: Optional[str] = None) -> dict[str, Any]:
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


def thread_env(threads: Optional[int], base: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_measured(cmd: Sequence[str], log_path: Path, env: Optional[dict[str, str]] = None,
                 cwd: Optional[Path] = None, stdin_path: Optional[Path] = None,
                 stdout_path: Optional[Path] = None) -> dict[str, Any]:
    """Run a command to completion; stdout/stderr to files. Returns wall/CPU seconds and peak RSS
    (from wait4, so the child's own numbers), and raises with the log tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as err, open(stdout_path or os.devnull, "w") as out, \
            open(stdin_path or os.devnull, "rb") as inp:
        proc = subprocess.Popen(list(map(str, cmd)), stdin=inp, stdout=out if stdout_path else err,
                                stderr=err, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: never leave the child writing into a run we may redo
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {code}; {log_path}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


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
                raise SystemExit(f"missing {data_dir}/{name}.{lang}[.gz]: pass --data-dir")
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
