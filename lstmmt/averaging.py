"""`lstmmt average` that cannot hurt: the mean of several checkpoints' weights, kept only if
it translates the validation set at least as well as best.pt.

Averaging the checkpoints of a short run can average a half-trained model into a good one
(a 12-minute Multi30k run scored 23 test BLEU averaged, 34 with best.pt alone); so when the
run has a validation split, both are scored the way validation scores (greedy search,
BLEU), and if the average is worse, the output holds best.pt's weights and the command says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import sacrebleu

from lstmmt import checkpoint
from lstmmt.evaluate import read_lines
from lstmmt.rundir import RunDir
from lstmmt.translator import Translator


@dataclass
class Averaged:
    """What `average` wrote: the checkpoints averaged, and the validation BLEUs it compared."""

    paths: list[Path]
    target: Path
    averaged_bleu: Optional[float] = None  # None: not checked (no validation split, or --no-check)
    best_bleu: Optional[float] = None

    @property
    def kept_best(self) -> bool:
        return self.averaged_bleu is not None and self.best_bleu is not None and self.averaged_bleu < self.best_bleu

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.paths)
        if self.averaged_bleu is None:
            return f"Averaged {len(self.paths)} checkpoints ({names}) into {self.target}"
        if self.kept_best:
            return (f"The average of {names} scored {self.averaged_bleu:.2f} validation BLEU (greedy), below best.pt's "
                    f"{self.best_bleu:.2f}: {self.target} holds best.pt's weights instead")
        return (f"Averaged {len(self.paths)} checkpoints ({names}) into {self.target}: validation BLEU (greedy) "
                f"{self.averaged_bleu:.2f}, best.pt {self.best_bleu:.2f}")


def average_checkpoints(run: RunDir, paths: list[Path], target: Path, device: str = "auto", check: bool = True) -> Averaged:
    """Write the average of `paths` to `target`, or best.pt's model where the average scores lower on val."""
    checkpoint.save(target, checkpoint.average(paths))
    result = Averaged(paths, target)
    if not (check and run.has_split("valid") and run.checkpoint("best").exists()):
        return result
    result.averaged_bleu = valid_bleu(run, str(target), device)
    result.best_bleu = valid_bleu(run, "best", device)
    if result.kept_best:
        best = checkpoint.load(run.checkpoint("best"))
        kept = {key: best[key] for key in ("config", "vocab", "step", "model") if key in best}
        checkpoint.save(target, kept | {"averaged_from": [], "kept_best_over": [str(p) for p in paths]})
    return result


def valid_bleu(run: RunDir, checkpoint_name: str, device: str) -> float:
    """BLEU of greedy translations of the validation split, as training's validation scores it."""
    translator = Translator.load(run.root, checkpoint_name, device, beam_size=1, n_best=1)
    hyps = [t.text for t in translator.translate(read_lines(run.text("valid", "src")))]
    return sacrebleu.corpus_bleu(hyps, [read_lines(run.text("valid", "tgt"))]).score
