"""Corpus-level BLEU, chrF and TER with sacrebleu, each with its signature.

The signature (tokenizer, smoothing, sacrebleu version, ...) travels with every score so
that numbers from different runs are only compared when they were computed the same way.
Hypotheses and references are compared in Unicode NFC: the same text in another
normalisation form (ä as a + combining diaeresis, NFD, as some tools write it) scores the same.
Besides the cased BLEU, `bleu_lowercase` is BLEU after lowercasing both sides, the figure many
published results (Multi30k's among them) report; compare it with those only, and mind that
their tokenization may differ from sacreBLEU's 13a.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER

from lstmmt.errors import UserError


def score(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Score line-aligned hypotheses against one reference each.

    Returns {"bleu", "bleu_lowercase", "chrf", "ter": float, "signatures": {metric: str}, "lines": int}.
    """
    _check_aligned(hypotheses, references)
    hypotheses, references = nfc(hypotheses), nfc(references)
    metrics = {"bleu": BLEU(), "bleu_lowercase": BLEU(lowercase=True), "chrf": CHRF(), "ter": TER()}
    result: dict[str, Any] = {}
    for name, metric in metrics.items():
        result[name] = metric.corpus_score(hypotheses, [references]).score
    result["signatures"] = {name: str(metric.get_signature()) for name, metric in metrics.items()}
    result["lines"] = len(hypotheses)
    return result


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU alone (validation during training, checkpoint averaging), computed as `score` computes it."""
    return BLEU().corpus_score(nfc(hypotheses), [nfc(references)]).score


def nfc(lines: list[str]) -> list[str]:
    """Each line in Unicode NFC (model outputs already are: SentencePiece normalises with NFKC)."""
    return [unicodedata.normalize("NFC", line) for line in lines]


def _check_aligned(hypotheses: list[str], references: list[str]) -> None:
    """Misaligned files give meaningless scores rather than errors, so refuse them up front."""
    if len(hypotheses) != len(references):
        raise UserError(
            f"hypotheses have {len(hypotheses)} lines but references have {len(references)}; "
            "they must be line-aligned"
        )
    if not hypotheses:
        raise UserError("nothing to score: hypotheses and references are empty")
