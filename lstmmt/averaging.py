"""`lstmmt average` that cannot hurt: the mean of several checkpoints' weights, kept only if
it translates the validation set at least as well as best.pt.

Averaging the checkpoints of a short run can average a half-trained model into a good one
(a 12-minute Multi30k run scored 23 test BLEU averaged, 34 with best.pt alone); so when the
run has a validation split, both are scored as training's validation scores a model
(lstmmt/validation.py: greedy search of the encoded split, BLEU), and if the average is
worse, the output holds best.pt's weights and the command says so.
An average with best.pt's very weights (one checkpoint, the best one) is not scored against itself.

The output is written once, after the comparison, and never replaces what training keeps
(best.pt, last.pt, step-N.pt), another training checkpoint, one of the averaged checkpoints,
or the run's data, tokenizer or config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lstmmt import checkpoint
from lstmmt.errors import UserError
from lstmmt.rundir import RunDir, check_output
from lstmmt.validation import Validation


@dataclass
class Averaged:
    """What `average` wrote: the checkpoints averaged, and the validation BLEUs it compared."""

    paths: list[Path]
    target: Path
    averaged_bleu: float | None = None  # None: not checked (no validation split, --no-check, or best.pt's weights)
    best_bleu: float | None = None
    same_as_best: bool = False  # the average holds best.pt's weights: nothing to compare

    @property
    def kept_best(self) -> bool:
        return self.averaged_bleu is not None and self.best_bleu is not None and self.averaged_bleu < self.best_bleu

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.paths)
        if self.same_as_best:
            return (f"Averaged {len(self.paths)} checkpoints ({names}) into {self.target}: the same weights as "
                    "best.pt, so not compared with it on validation")
        if self.averaged_bleu is None:
            return f"Averaged {len(self.paths)} checkpoints ({names}) into {self.target}"
        if self.kept_best:
            return (f"The average of {names} scored {self.averaged_bleu:.2f} validation BLEU (greedy), below best.pt's "
                    f"{self.best_bleu:.2f}: {self.target} holds best.pt's weights instead")
        return (f"Averaged {len(self.paths)} checkpoints ({names}) into {self.target}: validation BLEU (greedy) "
                f"{self.averaged_bleu:.2f}, best.pt {self.best_bleu:.2f}")


def check_target(run: RunDir, target: Path, paths: list[Path]) -> None:
    """Refuse an output that would replace what training keeps or reads (best.pt, last.pt,
    step-N.pt: a later train would resume from an average, which has no optimizer state), an
    existing training checkpoint anywhere, one of the averaged checkpoints, or the run's data,
    tokenizer or config. averaged.pt, other new names, and an earlier average may be written."""
    resolved = Path(target).resolve()
    in_checkpoints = resolved.parent == run.checkpoints.resolve()
    if in_checkpoints and checkpoint.TRAINING_NAMES.fullmatch(resolved.name):
        raise UserError(f"{target} is a checkpoint training writes: write the average to {run.checkpoint('averaged')} "
                        "(the default) or another name")
    check_output(target, paths, run=None if in_checkpoints else run)  # averaged.pt and new names may go in checkpoints/
    if resolved.is_file() and checkpoint.is_training_checkpoint(resolved):
        raise UserError(f"{target} is a training checkpoint: averaging would replace it; choose another -o")


def average_checkpoints(run: RunDir, paths: list[Path], target: Path, device: str = "auto",
                        check: bool = True) -> Averaged:
    """Write the average of `paths` to `target`, or best.pt's model where the average scores lower on val."""
    check_target(run, target, paths)
    averaged = checkpoint.average(paths)
    result = Averaged(paths, target)
    best_path = run.checkpoint("best")
    if check and run.has_split("valid") and best_path.exists():
        best = checkpoint.load(best_path)
        result.same_as_best = _same_weights(averaged["model"], best["model"])
        if not result.same_as_best:
            validation = Validation.of_checkpoints(run, device)
            result.averaged_bleu = validation.checkpoint_bleu(averaged, paths[0])  # paths[0] gave its vocabulary
            result.best_bleu = validation.checkpoint_bleu(best, best_path)
        if result.kept_best:
            kept = {key: best[key] for key in ("config", "vocab", "step", "model") if key in best}
            averaged = kept | {"averaged_from": [], "kept_best_over": [str(p) for p in paths]}
    checkpoint.save(target, averaged)
    return result


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)

