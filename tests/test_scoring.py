"""lstmmt.scoring: a thin layer over sacrebleu, so check it against sacrebleu itself."""

from __future__ import annotations

import unicodedata

import pytest
import sacrebleu

from lstmmt.errors import UserError
from lstmmt.scoring import bleu, score

REFERENCES = [
    "der Zug fährt um halb acht ab",
    "ich habe dreiundzwanzig Äpfel gekauft",
    "am einundzwanzigsten Juni ist das Konzert",
]
HYPOTHESES = [
    "der Zug fährt um halb acht ab",
    "ich habe zweiundzwanzig Äpfel gekauft",
    "das Konzert ist am einundzwanzigsten Juni",
]


def test_identical_text_scores_perfectly() -> None:
    result = score(REFERENCES, REFERENCES)
    assert result["bleu"] == pytest.approx(100.0)
    assert result["chrf"] == pytest.approx(100.0)
    assert result["ter"] == pytest.approx(0.0)
    assert result["lines"] == 3


def test_scores_match_sacrebleu() -> None:
    result = score(HYPOTHESES, REFERENCES)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    assert result["ter"] == pytest.approx(sacrebleu.corpus_ter(HYPOTHESES, [REFERENCES]).score)
    assert 0 < result["bleu"] < 100


def test_signatures_name_the_settings() -> None:
    signatures = score(HYPOTHESES, REFERENCES)["signatures"]
    assert set(signatures) == {"bleu", "bleu_lowercase", "chrf", "ter"}
    assert "tok:13a" in signatures["bleu"]
    assert all(f"version:{sacrebleu.__version__}" in text for text in signatures.values())


def test_line_count_mismatch_names_both_counts() -> None:
    with pytest.raises(UserError, match=r"2 lines.*3"):
        score(HYPOTHESES[:2], REFERENCES)


def test_empty_input_is_refused() -> None:
    with pytest.raises(UserError):
        score([], [])


def test_references_in_nfd_score_as_in_nfc() -> None:
    """ä, ö, ü written as a base letter and a combining mark (NFD) are the same text for scoring."""
    nfd = [unicodedata.normalize("NFD", line) for line in REFERENCES]
    assert nfd != REFERENCES
    nfc_result, nfd_result = score(HYPOTHESES, REFERENCES), score(HYPOTHESES, nfd)
    for metric in ("bleu", "chrf", "ter"):
        assert nfd_result[metric] == nfc_result[metric]
    assert score([unicodedata.normalize("NFD", h) for h in HYPOTHESES], REFERENCES)["bleu"] == nfc_result["bleu"]
    assert bleu(HYPOTHESES, nfd) == bleu(HYPOTHESES, REFERENCES) == pytest.approx(nfc_result["bleu"])


def test_lowercased_bleu_is_stored_beside_the_cased_one():
    from lstmmt.scoring import score

    result = score(["A Dog Runs On The Beach ."] * 3, ["a dog runs on the beach ."] * 3)
    assert result["bleu_lowercase"] == pytest.approx(100.0) and result["bleu"] < 50
    assert "case:lc" in result["signatures"]["bleu_lowercase"]
