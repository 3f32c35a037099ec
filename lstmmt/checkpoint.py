"""Checkpoints: written atomically, loaded without running pickled code, averaged.

A checkpoint is a dict of tensors and plain Python values (no classes), saved with
torch.save and read with `weights_only=True`, so a planted file cannot execute code.
It holds everything to rebuild the model (config, vocabulary sizes) and to resume
training exactly (optimizer, step, data position, RNG states, early-stopping state).
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lstmmt.errors import UserError, first_line
from lstmmt.rundir import RunDir, write_output

if TYPE_CHECKING:
    from lstmmt.config import Config
    from lstmmt.model import Seq2Seq
    from lstmmt.tokenizer import Tokenizer

FORMAT = 1


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (or into a FIFO or device: rundir.write_output); a failed
    write (disk full, read-only folder) is a UserError naming the file, and the previous file of
    that name stays intact."""
    path = Path(path)
    try:
        write_output(path, lambda target: torch.save({"format": FORMAT, **payload}, target))
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError (basic_ios::clear, unexpected pos)
        if isinstance(exc, RuntimeError) and not _disk_nearly_full(path.parent):
            raise
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no space left on device"
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        advice = "free some space" if cause == "no space left on device" or getattr(exc, "errno", None) == errno.ENOSPC \
            else "make the folder writable"
        raise UserError(f"cannot write checkpoint {path}: {cause}{kept}; {advice} and run again") from None


def _disk_nearly_full(directory: Path) -> bool:
    """Whether the file system of `directory` has too little space left for a checkpoint to fit (< 64 MiB)."""
    try:
        return shutil.disk_usage(directory).free < 64 * 2**20
    except OSError:
        return False


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, truncated or unsafe file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for torn zips and refused globals
        raise UserError(f"cannot load checkpoint {path} (truncated, corrupt or unsafe): {first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise UserError(f"{path} is not an lstmmt checkpoint")
    return payload


def load_training(path: Path) -> dict[str, Any]:
    """`load` of a checkpoint training can resume from: one without optimizer state (an average)
    is a UserError naming it."""
    payload = load(path)
    if "optimizer" not in payload:
        raise UserError(f"{path} holds no training state (an averaged model?): training cannot resume from it; "
                        "move it out of the checkpoints folder")
    return payload


def is_training_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoint that training wrote (it holds optimizer state), read lazily
    (memory-mapped); any other file, checkpoint or not, is not."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint at all: torch raises many types
        return False
    return isinstance(payload, dict) and "optimizer" in payload


TRAINING_NAMES = re.compile(r"(best|last|step-\d+)\.pt")
"""The names training writes in checkpoints/ and resumes from or points `--checkpoint best` at."""


def step_path(run: RunDir, step: int) -> Path:
    return run.checkpoint(f"step-{step}")


def save_training(run: RunDir, payload: dict[str, Any], best: bool, keep: int) -> None:
    """The one place training writes: step-N.pt, then last.pt (so the newest step file is never
    older than last.pt), best.pt when it is the best so far; then old step files are pruned."""
    save(step_path(run, payload["step"]), payload)
    save(run.checkpoint("last"), payload)
    if best:
        save(run.checkpoint("best"), payload)
    prune(run, keep)


def resume_candidates(run: RunDir) -> list[Path]:
    """Checkpoints to resume from, newest first: step files, then last.pt."""
    return [p for p in [*step_checkpoints(run), run.checkpoint("last")] if p.exists()]


def rng_state(device: "torch.device") -> dict[str, Any]:
    """The RNG states that training draws from: the CPU's, and the training GPU's (not every
    visible GPU's, so a run resumes with fewer or other GPUs)."""
    return {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def restore_rng(rng: dict[str, Any], device: "torch.device") -> None:
    """Set the RNG states saved by `rng_state`. A GPU run resumed on the CPU keeps the CPU's
    state only; checkpoints from before held one state per visible GPU, of which the first
    is the training GPU's (rank 0 trains on cuda:0)."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state(rng["cuda"][0], device)


def step_checkpoints(run: RunDir) -> list[Path]:
    """step-N.pt files, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in run.checkpoints.glob("step-*.pt") if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(run: RunDir, keep: int) -> None:
    for old in step_checkpoints(run)[keep:]:
        old.unlink(missing_ok=True)


def resolve(run: RunDir, name: str) -> Path:
    """best | last | averaged | a path -> the checkpoint file."""
    if name in ("best", "last", "averaged"):
        path = run.checkpoint(name)
        if not path.exists():
            step = f"average {run.root} --last N" if name == "averaged" else f"train {run.root}"
            raise UserError(f"{run.root} has no {name} checkpoint: run `lstmmt {step}` first")
        return path
    return Path(name)


def average(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model weights are the mean of the given checkpoints' weights."""
    if not paths:
        raise UserError("no checkpoints to average")
    first = load(paths[0])
    total = {k: v.double().clone() for k, v in first["model"].items()}
    for path in paths[1:]:
        model = load(path)["model"]
        if model.keys() != total.keys() or any(model[k].shape != total[k].shape for k in total):
            raise UserError(f"{path} has a different architecture from {paths[0]}; cannot average")
        for key, value in model.items():
            total[key] += value.double()
    averaged = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in total.items()}
    return {key: first[key] for key in ("config", "vocab", "step") if key in first} | {
        "model": averaged,
        "averaged_from": [str(p) for p in paths],
    }


def vocab_info(tokenizer: "Tokenizer") -> dict[str, Any]:
    return {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size, "joint": tokenizer.joint}


def build_model(config: "Config", tokenizer: "Tokenizer") -> "Seq2Seq":
    from lstmmt.model import Seq2Seq

    return Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)


def load_model(path: Path, tokenizer: "Tokenizer") -> tuple["Seq2Seq", "Config", dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, checking it fits this run's tokenizer."""
    payload = load(path)
    model, config = model_of(payload, tokenizer, path)
    return model, config, payload


def model_of(payload: dict[str, Any], tokenizer: "Tokenizer", path: Path) -> tuple["Seq2Seq", "Config"]:
    """The model of a loaded checkpoint (`path` names it in errors), checked to fit this run's tokenizer."""
    from lstmmt.config import Config

    if payload.get("vocab") != vocab_info(tokenizer):
        raise UserError(
            f"{path} was trained with vocabulary {payload.get('vocab')}, but this run's tokenizer has "
            f"{vocab_info(tokenizer)}: the checkpoint belongs to another run"
        )
    config = Config.from_dict(payload["config"])
    model = build_model(config, tokenizer)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise UserError(f"{path} does not match the model described by its config: {first_line(exc)}") from None
    return model, config


def select_for_average(run: RunDir, last: int | None = None, best: int | None = None) -> list[Path]:
    """The `last` newest step checkpoints, or the `best` ones by the validation BLEU stored in each;
    all of them when fewer are kept (a short run may have validated once), which the caller reports."""
    if (last is None) == (best is None):
        raise UserError("pass exactly one of --last N or --best N")
    option, count = ("--last", last) if last is not None else ("--best", best)
    if count < 1:
        raise UserError(f"{option} must be >= 1, got {count}")
    kept = step_checkpoints(run)
    if not kept:
        raise UserError(f"{run.checkpoints} has no step-N.pt checkpoints to average")
    if last is not None:
        return kept[:last]
    scored = [(load(p).get("valid", {}).get("bleu", float("-inf")), p) for p in kept]
    return [p for _, p in sorted(scored, key=lambda pair: -pair[0])[:best]]
