"""The Translator API and what goes through it: translate's text and JSONL output, forced
decoding, ensembles, attention heatmaps.

One tiny model is trained once per session (30 steps, tests/conftest.py): it translates badly and rarely
stops before the length limit, which is what these tests need (the plumbing, limits and
scores; learning is tested in test_cli.py).
"""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmmt import Translator, UserError
from lstmmt.config import DecodeConfig
from lstmmt.decoding import Ensemble, search_corpus
from lstmmt.search import beam_search, max_lengths
from tests.helpers import LENGTHS, SRC, TABLE, TOY_LINES, A, B, TableModel, invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture()
def input_file(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("".join(line + "\n" for line in TOY_LINES), encoding="utf-8")
    return path


def test_translator_gives_the_same_strings_as_translate(run, input_file, tmp_path):
    translator = Translator.load(run, device="cpu", beam_size=3, n_best=2, length_penalty=0.5)
    translations = translator.translate(TOY_LINES)
    result = invoke("translate", run, "-i", input_file, "-o", tmp_path / "out.txt", "--beam", "3",
                    "--length-penalty", "0.5")
    assert result.exit_code == 0, result.output
    assert [t.text for t in translations] == (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert [t.text == "" for t in translations] == [not line.strip() for line in TOY_LINES]
    assert all(len(t.n_best) == 2 and t.n_best[0].text == t.text and t.score == t.n_best[0].score
               for t in translations if t.text)
    result = invoke("translate", run, "-i", input_file, "--beam", "3", "--n-best", "2", "--length-penalty", "0.5")
    rows = result.stdout.splitlines()
    expected = [f"{i} ||| {c.text} ||| {c.score:.4f}" for i, t in enumerate(translations) for c in t.n_best]
    assert [row for row in rows if not row.endswith("|||  ||| 0.0000")] == expected


def test_set_max_len_a_changes_the_output_length_limit(run, input_file):
    """The untrained model runs into the limit; with max_len_a 0.5 the limit is lower, and
    the lengths in the JSONL alignment (target pieces + EOS) stay within it."""
    lengths = {}
    for a in (1.5, 0.5):
        result = invoke("translate", run, "-i", input_file, "--format", "jsonl", "--alignment", "--beam", "2",
                        "--set", f"decode.max_len_a={a}")
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(records) == len(TOY_LINES)
        pairs = [(len(r["alignment"]["source"]), len(r["alignment"]["target"])) for r in records if "alignment" in r]
        limits = max_lengths(torch.tensor([s for s, _ in pairs]), a, 3).tolist()
        assert all(t <= limit for (_, t), limit in zip(pairs, limits))
        lengths[a] = [t for _, t in pairs]
    assert max(lengths[1.5]) > max(lengths[0.5])


def test_jsonl_attention_rows_sum_to_one_over_the_real_source(run, input_file):
    result = invoke("translate", run, "-i", input_file, "--format", "jsonl", "--alignment", "--beam", "3",
                    "--n-best", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] == "" for r in records] == [not line.strip() for line in TOY_LINES]
    for record in records:
        if not record["text"] and not record["n_best"]:
            assert "alignment" not in record and record["score"] == 0.0
            continue
        alignment = record["alignment"]
        weights = np.array(alignment["weights"])
        assert weights.shape == (len(alignment["target"]), len(alignment["source"]))
        assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-4)
        assert np.array_equal(weights, weights.round(6))  # six decimals, and written as such
        assert max(len(number) for number in re.findall(r"[0-9.e-]+", json.dumps(alignment["weights"]))) <= 9
        assert alignment["source"][-1] == alignment["target"][-1] == "</s>"
        words = [tuple(map(int, pair.split("-"))) for pair in alignment["words"].split()]
        assert words and all(0 <= s < len(alignment["source"]) and 0 <= t < len(alignment["target"]) for s, t in words)
        assert len(record["n_best"]) == 2 and record["n_best"][0]["text"] == record["text"]


def test_plot_attention_writes_a_png(run, tmp_path):
    target = tmp_path / "attention.png"
    result = invoke("plot-attention", run, "half past seven", "-o", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_forced_decoding_scores_equal_the_search_scores_of_the_same_output(run):
    """Forced decoding of beam search's best output (as ids: text may re-encode differently)
    sums the same step log-probabilities; scores of text are normalised log-probabilities."""
    translator = Translator.load(run, device="cpu", beam_size=3, length_penalty=1.0)
    lines = [line for line in TOY_LINES if line.strip()]
    translations = translator.translate(lines)
    scores = translator.score(lines, [t.text for t in translations])
    encoded = translator._encode(lines, 1, translator.decode)
    hyps = translator.search(encoded)
    forced = translator._force(encoded, [np.asarray(h[0].tokens, dtype=np.int32) for h in hyps], translator.decode)
    for hyp, f in zip(hyps, forced):
        assert math.isclose(float(f.log_probs.sum()), hyp[0].log_prob, rel_tol=1e-4, abs_tol=1e-4)
    assert all(s.tokens >= 1 and s.log_prob <= 0 and math.isclose(s.score, s.log_prob / s.tokens, rel_tol=1e-9)
               for s in scores)


def test_forced_decoding_of_a_hand_built_model():
    """TableModel: P(B | BOS) = 0.4, P(EOS | B) = 0.9, so [B] scores ln 0.36; [A, C] ln(0.6 * 0.3 * 1)."""
    from lstmmt.batching import pad
    from lstmmt.decoding import forced_log_probs
    from lstmmt.tokenizer import EOS

    C = 6
    targets = pad([np.array([B]), np.array([A, C])], suffix=EOS)
    # rows go on past their EOS
    log_probs = forced_log_probs(Table(TABLE), SRC.repeat(2, 1), LENGTHS.repeat(2), targets)
    assert log_probs.sum(dim=1).tolist() == pytest.approx([math.log(0.4 * 0.9), math.log(0.6 * 0.3)], rel=1e-6)


def test_score_command_writes_one_line_per_pair(run, tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("twenty-one\nseven\n\n", encoding="utf-8")
    tgt.write_text("einundzwanzig\nsieben\nacht\n", encoding="utf-8")
    result = invoke("score", run, "--src", src, "--tgt", tgt)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    expected = Translator.load(run, device="cpu").score(["twenty-one", "seven", ""],
                                                        ["einundzwanzig", "sieben", "acht"])
    assert [(float(s), float(lp)) for s, lp in rows] == [
        (pytest.approx(e.score, abs=1e-4), pytest.approx(e.log_prob, abs=1e-4)) for e in expected]
    tgt.write_text("einundzwanzig\n", encoding="utf-8")
    result = invoke("score", run, "--src", src, "--tgt", tgt, "-o", tmp_path / "scores.txt")
    assert result.exit_code == 1 and "before the other input" in result.stderr
    assert not (tmp_path / "scores.txt").exists()


class Table:
    """A TableModel with its own table: log P(next | previous token) from `table`."""

    def __init__(self, table):
        self.inner, self.table = TableModel(), table

    def encode(self, src, src_lengths):
        return self.inner.encode(src, src_lengths)

    def decode_step(self, prev, memory, state):
        log_probs = torch.full((prev.size(0), 7), -math.inf)
        for row, token in enumerate(prev.tolist()):
            for nxt, p in self.table.get(token, {}).items():
                log_probs[row, nxt] = math.log(p)
        return log_probs, state


def test_an_ensemble_of_two_hand_built_models_finds_the_hand_computed_best():
    """Alone, the first model prefers A (0.6); the second prefers B (0.9). The mean of their
    log-probabilities: A (ln .6 + ln .1) / 2 = -1.41, B (ln .4 + ln .9) / 2 = -0.51, so B."""
    from lstmmt.tokenizer import BOS, EOS

    first = Table({BOS: {A: 0.6, B: 0.4}, A: {EOS: 1.0}, B: {EOS: 1.0}})
    second = Table({BOS: {A: 0.1, B: 0.9}, A: {EOS: 1.0}, B: {EOS: 1.0}})
    options = DecodeConfig(beam_size=2, length_penalty=0.0)
    assert beam_search(first, SRC, LENGTHS, options)[0][0].tokens == [A]
    best = beam_search(Ensemble([first, second]), SRC, LENGTHS, options)[0][0]
    assert best.tokens == [B]
    assert math.isclose(best.log_prob, (math.log(0.4) + math.log(0.9)) / 2, rel_tol=1e-6)


def test_an_ensemble_of_one_model_equals_that_model(run):
    translator = Translator.load(run, device="cpu", beam_size=4, n_best=2)
    sentences = translator._encode([line for line in TOY_LINES if line.strip()], 1, translator.decode)
    alone = search_corpus(translator.models[0], sentences, translator.decode, translator.device, "fp32")
    ensemble = search_corpus(Ensemble(translator.models), sentences, translator.decode, translator.device, "fp32")
    one = [[(h.tokens, h.score) for h in hyps] for hyps in alone]
    assert one == [[(h.tokens, h.score) for h in hyps] for hyps in ensemble]


@pytest.fixture(scope="module")
def translator(run) -> Translator:
    return Translator.load(run, device="cpu", precision="fp32")


@pytest.mark.parametrize("lines,words", [
    ("a string", "lines must be a sequence of str (one str per line), got str: pass [text]"),
    (b"bytes", "got bytes"),
    (["seven", None], "lines[1] has type NoneType"),
    ([b"seven"], "lines[0] has type bytes"),
    (["seven", "six", 42], "lines[2] has type int"),
], ids=["a str", "bytes", "a None item", "a bytes item", "an int item"])
def test_translate_refuses_what_is_not_a_sequence_of_str(translator, lines, words):
    with pytest.raises(TypeError) as error:
        translator.translate(lines)
    assert words in str(error.value)


def test_score_refuses_what_is_not_a_sequence_of_str(translator):
    with pytest.raises(TypeError, match=r"targets\[0\] has type NoneType"):
        translator.score(["seven"], [None])
    with pytest.raises(TypeError, match="sources must be a sequence of str"):
        translator.score("seven", ["sieben"])


def test_lone_surrogates_are_cleaned_as_in_corpus_text(translator):
    """JSON escapes give Python lone surrogates, which SentencePiece cannot encode: they become U+FFFD."""
    cleaned = translator.translate(["A \ufffd dog", "seven\ufffd"])
    assert translator.translate(["A \ud800 dog", "seven\udfff"]) == cleaned
    cleaned_scores = translator.score(["A \ufffd dog"], ["ein \ufffd Hund"])
    assert translator.score(["A \ud800 dog"], ["ein \udc80 Hund"]) == cleaned_scores


def test_user_error_is_part_of_the_package_api():
    import lstmmt
    from lstmmt.errors import UserError

    assert lstmmt.UserError is UserError and "UserError" in lstmmt.__all__


def test_a_call_with_other_search_settings_gives_what_a_translator_loaded_with_them_gives(run, translator):
    """One Translator serves calls with different search-time settings: each call's results equal
    those of a Translator loaded with that call's settings."""
    decode = translator.decode.updated(beam_size=3, n_best=2, length_penalty=0.5, max_len_b=2, max_source_tokens=3)
    loaded = Translator.load(run, device="cpu", decode=decode)
    lines = TOY_LINES + ["on Monday the third of May and the fourth of June"]
    assert translator.translate(lines, alignment=True, decode=decode) == loaded.translate(lines, alignment=True)
    assert translator.translate(lines) == Translator.load(run, device="cpu", precision="fp32").translate(lines)
    targets = ["sieben"] * len(lines)
    assert translator.score(lines, targets, decode=decode) == loaded.score(lines, targets)
    assert translator.score(lines, targets, decode=decode) != translator.score(lines, targets)


def test_load_takes_a_decode_config_and_overrides_laid_over_it(run):
    decode = replace(DecodeConfig(), beam_size=2, n_best=2, precision="fp32", max_len_b=3)
    assert Translator.load(run, device="cpu", decode=decode).decode == decode
    assert Translator.load(run, device="cpu", decode=decode, n_best=1).decode == replace(decode, n_best=1)
    with pytest.raises(UserError, match="decode.beam_size must be"):
        Translator.load(run, device="cpu", decode=replace(decode, beam_size=0))
    with pytest.raises(UserError, match="decode.beam_size must be"):  # a beam that would exhaust the memory
        Translator.load(run, device="cpu", beam_size=10**9)
    with pytest.raises(TypeError, match="decode must be a DecodeConfig or None, got dict"):
        Translator.load(run, device="cpu", decode={"beam_size": 2})


def test_loading_a_file_or_a_release_without_manifest_says_what_it_is(run, tmp_path):
    with pytest.raises(UserError, match="is a file, not a run directory"):
        Translator.load(run / "config.yaml", device="cpu")
    assert invoke("export", run, "-o", tmp_path / "release").exit_code == 0
    (tmp_path / "release/manifest.json").unlink()
    with pytest.raises(UserError, match="has no manifest.json"):
        Translator.load(tmp_path / "release", device="cpu")


@pytest.mark.parametrize("key,value", [("precision", "bf16"), ("quantize", "int8"), ("shortlist", True)])
def test_a_call_cannot_change_what_load_prepared_the_models_for(translator, key, value):
    with pytest.raises(UserError, match=f"decode.{key} is read when the model loads"):
        translator.translate(["seven"], decode=replace(translator.decode, **{key: value}))
    with pytest.raises(UserError, match=f"decode.{key} is read when the model loads"):
        translator.score(["seven"], ["sieben"], decode=replace(translator.decode, **{key: value}))


def test_a_call_with_settings_out_of_range_is_refused(translator):
    with pytest.raises(TypeError, match="got dict"):
        translator.translate(["seven"], decode={"beam_size": 2})
    with pytest.raises(UserError, match="decode.n_best must be"):
        translator.translate(["seven"], decode=replace(translator.decode, beam_size=2, n_best=3))
