"""Choosing the device and the numeric precision, in one place for training and translation.

`precision: auto` (the default) means bf16 where the device runs it natively and
correctly, else fp32. Whether it does is found out by running it, not by reading CPU
flags alone: one tiny LSTM forward and backward under bf16 autocast, once per process and
device. oneDNN has no bf16 LSTM on AVX2-only CPUs (the probe fails there, and also under
ONEDNN_MAX_CPU_ISA=AVX2 on a Xeon), while CPUs with AVX512-BF16 or AMX and CUDA GPUs with
bf16 units pass it. An explicit `bf16` that the device cannot train in is a UserError
naming the setting to use instead.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmmt.errors import UserError, first_line


def resolve_device(name: str) -> torch.device:
    """auto -> the first CUDA GPU when PyTorch sees one, else cpu; a GPU that is not there is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: PyTorch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class Precision:
    """The precision a step runs in ("fp32" or "bf16") and why, for the line the step prints."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_precision(requested: str, device: torch.device, key: str, training: bool) -> Precision:
    """Resolve `auto`, and check an explicit bf16 against what the device can do.

    `key` names the config setting in messages (train.precision or decode.precision).
    Search in bf16 runs on CPUs without bf16 units too (emulated, slowly), so there an
    explicit bf16 is allowed for translation; training in bf16 needs the kernels.
    """
    problem = bf16_problem(device)
    if requested == "fp32":
        return Precision("fp32", f"{key}=fp32")
    if requested == "bf16":
        if problem and (training or device.type == "cuda"):
            raise UserError(f"{key}=bf16, but {problem}; set {key}=auto (or fp32) to train in fp32")
        return Precision("bf16", f"{key}=bf16" + (f"; emulated: {problem}" if problem else ""))
    if problem:
        return Precision("fp32", f"{key}=auto: {problem}")
    return Precision("bf16", f"{key}=auto: {device_name(device)} runs bf16 natively")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"this CPU ({platform.processor() or platform.machine()})"


def hardware(device: torch.device) -> str:
    """The machine a run trained on, for train.json and model cards: the GPU's name, or the CPU's
    model with the instruction sets that decide its speed and precision (avx2, avx512_bf16, amx)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = ", ".join(cpu_flags()) or "no AVX2"
    return f"{cpu_model()} ({flags}), {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The instruction-set flags that matter for torch's CPU kernels."""
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni"}
    return sorted(set(_cpuinfo("flags").split()) & wanted)


def _cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def bf16_problem(device: torch.device) -> str:
    """Why `device` cannot train in bf16 natively, or "" when it can (cached per device)."""
    return _bf16_problem(device.type, device.index)


@functools.cache
def _bf16_problem(device_type: str, index: int | None) -> str:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    if device_type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name(device)} has no bf16 units"
    if device_type == "cpu" and not _cpu_has_bf16_units():
        return "this CPU has no bf16 units (AVX512-BF16 or AMX)"
    try:
        _bf16_lstm_step(device)
    except RuntimeError as exc:
        return f"a bf16 LSTM step fails on {device_type} ({first_line(exc, 120)})"
    return ""


def _cpu_has_bf16_units() -> bool:
    """On x86, oneDNN's native bf16 needs AVX512-BF16 or AMX (elsewhere it would emulate bf16,
    slower than fp32); on other CPUs we cannot tell, and the probe alone decides."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _bf16_lstm_step(device: torch.device) -> None:
    """One tiny LSTM + linear forward and backward under bf16 autocast, as training runs them;
    raises what the device raises (oneDNN: 'could not create a primitive descriptor')."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        lstm = torch.nn.LSTM(8, 8, batch_first=True).to(device)
        x = torch.randn(2, 3, 8, device=device, requires_grad=True)
        with autocast(device, "bf16"):
            out, _ = lstm(x)
            loss = out.float().square().sum()
        loss.backward()
    if not torch.isfinite(x.grad).all():
        raise RuntimeError("non-finite gradient from a bf16 LSTM")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (a no-op context in fp32). Takes a resolved precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


DEFAULT_BATCH_TOKENS = {"cpu": (2048, 8000), "cuda": (16384, 32768)}
"""(training, translation) token budgets per batch when the config leaves them to the device:
on a CPU the batch that scored best in a time budget (twice the updates of 4,096 for 5% fewer
tokens/s, docs/results.md), and sizes that keep a GPU busy with Multi30k-length sentences."""


SHORTLIST_SOURCE_TOKENS = 1600
"""Source tokens per search batch at most, by default, when a CPU searches over a vocabulary
shortlist: a batch's output layer covers the union of its sentences' allowed pieces, so
smaller batches compute less. The default budget gives beam 5 this size (8,000 / 5); greedy
search would get 8,000, and ran 1.26x faster at 1,600 (docs/performance.md, "Translation on a CPU")."""


def default_batch_tokens(device: torch.device, training: bool) -> int:
    train_tokens, decode_tokens = DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cpu"])
    return train_tokens if training else decode_tokens


def search_batch_sources(device: torch.device, batch_tokens: int | None, hypotheses: int, shortlist: bool) -> int:
    """Source tokens per search batch: `batch_tokens` (decode.batch_tokens, counting source tokens
    x hypotheses per sentence) or the device's default, which on a CPU with a shortlist is capped
    at SHORTLIST_SOURCE_TOKENS."""
    if batch_tokens is not None:
        return max(1, batch_tokens // hypotheses)
    sources = max(1, default_batch_tokens(device, training=False) // hypotheses)
    return min(sources, SHORTLIST_SOURCE_TOKENS) if shortlist and device.type == "cpu" else sources


def prepare_device(device: torch.device) -> None:
    """Settings that make `device` fast without changing what fp32 means on the CPU: TF32
    matmuls and convolutions on CUDA GPUs (10-bit mantissa products, fp32 accumulation, as
    cuDNN RNNs already use by default)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
