"""Checkpoints: written atomically, loaded without running pickled code, averaged.

A checkpoint is a dict of tensors and plain Python values (no classes), saved with
torch.save and read with `weights_only=True`, so a planted file cannot execute code.
It holds everything to rebuild the model (config, vocabulary sizes) and to resume
training exactly (optimizer, step, data position, RNG states, early-stopping state).
"""

from __future__ import annotations

import errno
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lstmmt.errors import UserError, first_line
from lstmmt.rundir import RunDir, sha256_file, write_output

if TYPE_CHECKING:
    from lstmmt.config import Config, ModelConfig
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
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        # (basic_ios::clear, unexpected pos)
        if isinstance(exc, RuntimeError) and not _disk_nearly_full(path.parent):
            raise
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no space left on device"
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        advice = "free some space" if cause == "no space left on device" \
            or getattr(exc, "errno", None) == errno.ENOSPC else "make the folder writable"
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
    except pickle.UnpicklingError:  # torch's own advice (load with weights_only=False) would run the code
        raise UserError(f"cannot load checkpoint {path} (unsafe): it holds pickled objects other than tensors, "
                        "which lstmmt never runs; it is no checkpoint lstmmt wrote") from None
    except Exception as exc:  # noqa: BLE001 (torch raises many types for torn zips)
        reason = first_line(exc, 120).split(". ")[0]
        raise UserError(f"cannot load checkpoint {path} (truncated or corrupt): {reason}") from None
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
    except Exception:  # noqa: BLE001 (not a checkpoint at all: torch raises many types)
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


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states that training draws from: the CPU's, and the training GPU's (not every
    visible GPU's, so a run resumes with fewer or other GPUs)."""
    return {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Set the RNG states saved by `rng_state`. A GPU run resumed on the CPU keeps the CPU's
    state only; checkpoints from before held one state per visible GPU, of which the first
    is the training GPU's (rank 0 trains on cuda:0)."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state(rng["cuda"][0], device)


def step_checkpoints(run: RunDir) -> list[Path]:
    """step-N.pt files, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in run.checkpoints.glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
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


def vocab_info(tokenizer: Tokenizer) -> dict[str, Any]:
    return {"src": tokenizer.src_vocab_size, "tgt": tokenizer.tgt_vocab_size, "joint": tokenizer.joint}


def describe_vocab(info: Any) -> str:
    """vocab_info in words: "a joint vocabulary of 100 pieces", or one per side."""
    if not isinstance(info, dict):
        return "an unrecorded vocabulary"
    if info.get("joint"):
        return f"a joint vocabulary of {info.get('tgt')} pieces"
    return f"vocabularies of {info.get('src')} source and {info.get('tgt')} target pieces"


def build_model(config: Config, tokenizer: Tokenizer) -> Seq2Seq:
    from lstmmt.model import Seq2Seq

    return Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)


def load_model(path: Path, tokenizer: Tokenizer) -> tuple[Seq2Seq, Config, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, checking it fits this run's tokenizer."""
    payload = load(path)
    model, config = model_of(payload, tokenizer, path)
    return model, config, payload


def model_of(payload: dict[str, Any], tokenizer: Tokenizer, path: Path) -> tuple[Seq2Seq, Config]:
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


# -- parents: the weights a run starts from (`train --init-from`) ------------------------------


@dataclass(frozen=True)
class Parent:
    """A trained model that a child run starts from: its weights only (no optimizer state, no
    schedule), the settings it was trained with, and what identifies it."""

    path: Path  # what was named, made absolute: a run directory, a checkpoint file or a release
    config: Config  # the parent's settings: a child takes its model section
    weights: dict[str, torch.Tensor]  # the model's state dict, fp32
    vocab: dict[str, Any]  # vocab_info of the parent's tokenizer
    tokenizer_digest: str | None  # RunDir.tokenizer_digest; None for a bare checkpoint file (sizes only)
    sha256: str  # of the checkpoint or weights file the weights came from

    def record(self) -> dict[str, str]:
        """What a child records about its parent (checkpoints, train.json)."""
        return {"path": str(self.path), "sha256": self.sha256}

    def child_config(self, base: Config) -> Config:
        """A child run's config `base` with the parent's model section and train.init_from naming the parent."""
        return replace(base, model=self.config.model, train=replace(base.train, init_from=str(self.path)))

    def check_child(self, run: RunDir, config: Config) -> None:
        """Refuse, in one line naming both sides, a child whose tokenizer or model shape cannot take these weights."""
        from lstmmt.tokenizer import Tokenizer

        child = vocab_info(Tokenizer.load(run.tokenizer_dir))
        fix = f"preprocess {run.root} with --tokenizer-from {self.path}"
        if child != self.vocab:
            raise UserError(f"{self.path} was trained with {describe_vocab(self.vocab)}, but {run.root} has "
                            f"{describe_vocab(child)}: {fix}")
        if self.tokenizer_digest is not None and (mine := run.tokenizer_digest()) != self.tokenizer_digest:
            raise UserError(f"{run.root} has another tokenizer than {self.path} (sha256 {mine[:12]} vs "
                            f"{self.tokenizer_digest[:12]}): {fix}")
        self._check_shape(config.model)

    def _check_shape(self, model: ModelConfig) -> None:
        """Each model setting that would give the weights other shapes (a dropout would not) must be the parent's."""
        from lstmmt.config import shown

        shapes = weight_shapes(self.config.model, self.vocab)
        for key, value in asdict(model).items():
            theirs = getattr(self.config.model, key)
            if value != theirs and weight_shapes(replace(self.config.model, **{key: value}), self.vocab) != shapes:
                raise UserError(f"model.{key} is {shown(value)} here but {shown(theirs)} in {self.path}: a run started "
                                "from a parent keeps the parent's model shape; drop that setting")


def weight_shapes(model: ModelConfig, vocab: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The name and shape of each weight of a model with these settings and vocabulary sizes,
    built on the meta device: nothing is allocated."""
    from lstmmt.model import Seq2Seq

    with torch.device("meta"):
        built = Seq2Seq(model, vocab["src"], vocab["tgt"], vocab["joint"])
    return {name: tuple(value.shape) for name, value in built.state_dict().items()}


def load_parent(path: Path | str) -> Parent:
    """The parent at `path`: a run directory (its best checkpoint), a checkpoint file, or a release
    (checked against its manifest). A missing or unreadable one is a UserError."""
    from lstmmt.config import Config
    from lstmmt.release import WEIGHTS, Release, is_release, open_source
    from lstmmt.tokenizer import Tokenizer

    path = Path(path).resolve()
    if not path.exists():
        raise UserError(f"parent {path} does not exist: name a run directory, a checkpoint file or a release "
                        "(train.init_from; null trains from scratch)")
    if path.is_file() and not is_release(path):
        payload = load(path)
        return Parent(path, Config.from_dict(payload["config"]), payload["model"], payload.get("vocab"), None,
                      sha256_file(path))
    source = open_source(path)
    if isinstance(source, Release):
        tokenizer, weights = Tokenizer.load(source.layout.tokenizer_dir), source.manifest["files"][WEIGHTS]
        return Parent(path, Config.load(source.layout.config), source.model(tokenizer).state_dict(),
                      vocab_info(tokenizer), source.layout.tokenizer_digest(), weights["sha256"])
    best = resolve(source, "best")
    payload = load(best)
    return Parent(path, Config.from_dict(payload["config"]), payload["model"], payload.get("vocab"),
                  source.tokenizer_digest(), sha256_file(best))
