"""Corpus-level BLEU, chrF and TER with sacrebleu, each with its signature.

The signature (tokenizer, smoothing, sacrebleu version, ...) travels with every score so
that numbers from different runs are only compared when they were computed the same way.
"""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER

from lstmmt.errors import UserError


def score(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Score line-aligned hypotheses against one reference each.

    Returns {"bleu", "chrf", "ter": float, "signatures": {metric: str}, "lines": int}.
    """
    _check_aligned(hypotheses, references)
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "ter": TER()}
    result: dict[str, Any] = {}
    for name, metric in metrics.items():
        result[name] = metric.corpus_score(hypotheses, [references]).score
    result["signatures"] = {name: str(metric.get_signature()) for name, metric in metrics.items()}
    result["lines"] = len(hypotheses)
    return result


def _check_aligned(hypotheses: list[str], references: list[str]) -> None:
    """Misaligned files give meaningless scores rather than errors, so refuse them up front."""
    if len(hypotheses) != len(references):
        raise UserError(
            f"hypotheses have {len(hypotheses)} lines but references have {len(references)}; "
            "they must be line-aligned"
        )
    if not hypotheses:
        raise UserError("nothing to score: hypotheses and references are empty")
