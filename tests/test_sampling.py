"""Sampled decoding: draws against literal distributions and a hand-built model, reproducibility by
seed whichever thread searches a batch, and the ways in: the config, the Translator, `translate
--set` and the native HTTP API's request parser."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstmmt import Translator
from lstmmt.cli import app
from lstmmt.config import Config, DecodeConfig
from lstmmt.decoding import for_search, search_corpus
from lstmmt.errors import UserError
from lstmmt.search import greedy_search, sample_search, sample_tokens, seeded_generator
from lstmmt.serve.requests import Limits, ServeError, native_request
from lstmmt.shortlist import SPECIALS, Shortlist
from lstmmt.tokenizer import BOS, EOS, PAD
from tests.helpers import LENGTHS, SRC, TABLE, TOY_LINES as LINES, A, B, TableModel, random_batch, random_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)
CPU = torch.device("cpu")
SAMPLE = DecodeConfig(sample_topk=0)


def drawn(probabilities: list[float], rows: int = 4000, **options) -> np.ndarray:
    """Tokens drawn by sample_tokens from one distribution repeated over `rows` rows."""
    log_probs = torch.tensor(probabilities).log().expand(rows, -1)
    settings = {"topk": 0, "temperature": 1.0} | options
    return sample_tokens(log_probs, generator=torch.Generator().manual_seed(1), **settings).numpy()


def test_draws_follow_the_distribution_sharpened_or_flattened_by_the_temperature():
    assert abs((drawn([0.6, 0.4]) == 0).mean() - 0.6) < 0.03
    # temperature 2: p ** (1/2), normalised: 0.7746 / (0.7746 + 0.6325) = 0.5505
    assert abs((drawn([0.6, 0.4], temperature=2.0) == 0).mean() - 0.5505) < 0.03
    assert (drawn([0.6, 0.4], temperature=0.01) == 0).all()


def test_top_k_draws_only_among_the_k_most_likely_tokens():
    tokens = drawn([0.1, 0.4, 0.2, 0.3], topk=2)
    assert set(tokens.tolist()) == {1, 3}
    assert abs((tokens == 1).mean() - 0.4 / 0.7) < 0.03
    assert (drawn([0.1, 0.4, 0.2, 0.3], topk=1) == 1).all()
    assert set(drawn([0.1, 0.4, 0.2, 0.3], topk=4).tolist()) == {0, 1, 2, 3}


def test_a_batch_generator_depends_on_the_seed_and_the_batch_alone():
    def first_draws(seed: int, src: torch.Tensor) -> list[float]:
        return torch.rand(4, generator=seeded_generator(seed, src)).tolist()

    other = torch.tensor([[A, A, EOS]])
    assert first_draws(1, SRC) == first_draws(1, SRC.clone())
    assert first_draws(1, SRC) != first_draws(2, SRC)
    assert first_draws(1, SRC) != first_draws(1, other)


class EndlessTable(TableModel):
    """TABLE's model, which after EOS gives EOS again: sampling draws a token for every row, ended ones too."""

    def decode_step(self, prev, memory, state):
        log_probs, state = super().decode_step(prev, memory, state)
        log_probs[prev == EOS, EOS] = 0.0
        return log_probs, state


def table_log_prob(tokens: list[int]) -> float:
    """ln P(tokens, EOS) by TABLE, worked out by hand from the table."""
    sequence = [*tokens, EOS]
    previous = [BOS, *tokens]
    return sum(math.log(TABLE[p][t]) for p, t in zip(previous, sequence))


def test_n_samples_per_sentence_with_the_models_log_probability_best_first():
    decode = SAMPLE.updated(n_best=40, beam_size=1, length_penalty=1.0)
    src, lengths = torch.cat([SRC, SRC]), torch.cat([LENGTHS, LENGTHS])
    found = sample_search(EndlessTable(), src, lengths, decode, seeded_generator(1, src))
    assert [len(hyps) for hyps in found] == [40, 40]
    for hyps in found:
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert math.isclose(h.log_prob, table_log_prob(h.tokens), rel_tol=1e-6)
            assert math.isclose(h.score, h.log_prob / (len(h.tokens) + 1), rel_tol=1e-6)
    # [B] (0.36) and [A] (0.24) are the likeliest of [A], [B], [A, B], [A, C], [B, C], [A, B, C]
    assert {(A,), (B,)} < {tuple(h.tokens) for h in found[0]}
    assert [h.tokens for h in found[0]] != [h.tokens for h in found[1]]  # each row draws its own


def test_samples_end_at_the_length_limit():
    decode = SAMPLE.updated(n_best=5, max_len_a=0.0, max_len_b=1)
    found = sample_search(EndlessTable(), SRC, LENGTHS, decode, seeded_generator(1, SRC))
    assert [h.tokens for h in found[0]] == [[]] * 5


def test_top_k_one_is_greedy_search():
    model = random_model()
    src, lengths = random_batch(16)
    greedy = greedy_search(model, src, lengths, DecodeConfig())
    sampled = sample_search(model, src, lengths, DecodeConfig(sample_topk=1), seeded_generator(5, src))
    assert [hyps[0].tokens for hyps in sampled] == [h.tokens for h in greedy]
    assert [hyps[0].score for hyps in sampled] == pytest.approx([h.score for h in greedy], rel=1e-5)
    assert any(len(h.tokens) > 2 for h in greedy)


def corpus_samples(decode: DecodeConfig) -> list[list[list[int]]]:
    """The samples of 40 random sentences in about 10 batches."""
    model = for_search(random_model(seed=3), CPU, "fp32")
    src, lengths = random_batch(40, seed=5)
    sentences = [row[: int(n) - 1].numpy() for row, n in zip(src, lengths)]
    return [[h.tokens for h in hyps] for hyps in search_corpus(model, sentences, decode, CPU, "fp32")]


def test_sampling_is_reproducible_by_seed_with_any_number_of_workers():
    decode = DecodeConfig(sample_topk=0, n_best=2, batch_tokens=120, workers=1)
    once = corpus_samples(decode)
    assert corpus_samples(decode) == once
    assert corpus_samples(decode.updated(workers=2)) == once
    assert corpus_samples(decode.updated(seed=2)) != once
    beam = corpus_samples(DecodeConfig(beam_size=2, n_best=2, batch_tokens=120))
    assert [hyps[0] for hyps in once] != [hyps[0] for hyps in beam]


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


def texts(translator: Translator, decode: DecodeConfig | None = None) -> list[list[str]]:
    return [[c.text for c in t.n_best] for t in translator.translate(LINES, decode=decode)]


def test_translator_samples_reproducibly_unlike_beam_search_and_another_seed(run):
    sampler = Translator.load(run, device="cpu", sample_topk=0, temperature=1.5, n_best=3, beam_size=1)
    samples = texts(sampler)
    assert [len(candidates) for candidates in samples] == [3, 0, 3, 3, 0, 3]
    assert texts(sampler) == samples
    assert texts(sampler, sampler.decode.updated(seed=2)) != samples
    beam = texts(Translator.load(run, device="cpu", beam_size=3, n_best=3))
    assert [c[0] for c in samples if c] != [c[0] for c in beam if c]


def test_an_ensemble_samples_from_the_mean_of_its_models(run):
    """Two copies of one model average to that model, so they draw what it draws."""
    options = {"device": "cpu", "sample_topk": 5, "temperature": 2.0, "seed": 4, "n_best": 2}
    alone = texts(Translator.load(run, "best", **options))
    assert texts(Translator.load(run, ["best", "best"], **options)) == alone
    assert texts(Translator.load(run, "best", **(options | {"seed": 5}))) != alone


def test_samples_over_a_shortlist_hold_only_the_pieces_it_allows(run):
    base = Translator.load(run, device="cpu", sample_topk=0, temperature=2.0, n_best=4)
    vocab = base.tokenizer.tgt_vocab_size
    short = Shortlist(np.tile(np.array([20, 21], dtype=np.int32), (vocab, 1)), SPECIALS.copy(), {})
    narrowed = Translator(base.models, base.tokenizer, base.decode, base.device, base.precision, shortlist=short)
    sentences = [np.asarray(ids, dtype=np.int32) for ids in base.tokenizer.encode_src(["seven", "half past seven"])]
    produced = {t for hyps in narrowed.search(sentences) for h in hyps for t in h.tokens}
    assert {20, 21} <= produced <= {20, 21, PAD, 1, 2}  # the specials (PAD, UNK, BOS) are always allowed


def test_translate_samples_with_set(run, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("seven\nhalf past seven\n", encoding="utf-8")

    def translate(*options: str) -> str:
        output = tmp_path / "out.txt"
        command = ["translate", str(run), "-i", str(source), "-o", str(output), "--device", "cpu", *options]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        return output.read_text(encoding="utf-8")

    sampled = translate("--set", "decode.sample_topk=0", "--set", "decode.temperature=2", "--beam", "1",
                        "--n-best", "3")
    assert sampled == translate("--set", "decode.sample_topk=0", "--set", "decode.temperature=2", "--beam", "1",
                                "--n-best", "3")
    assert [line.split(" ||| ")[0] for line in sampled.splitlines()] == ["0"] * 3 + ["1"] * 3
    assert sampled != translate("--set", "decode.sample_topk=0", "--set", "decode.temperature=2",
                                "--set", "decode.seed=9", "--beam", "1", "--n-best", "3")


@pytest.mark.parametrize("values, message", [
    ({"sample_topk": 0, "temperature": 0}, "decode.temperature must be a number in [0.01, 100], got 0"),
    ({"sample_topk": -1}, "decode.sample_topk must be an integer >= 0 (or null: beam search), got -1"),
    ({"sample_topk": 0, "seed": -1}, "decode.seed must be an integer in [0, 4294967295], got -1"),
    ({"temperature": 2.0}, "decode.temperature 2.0 applies only when sampling: set decode.sample_topk"),
    ({"n_best": 6}, "decode.n_best must be an integer in [1, decode.beam_size (5)], got 6"),
])
def test_bad_sampling_settings_are_one_line_naming_the_key(values, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        DecodeConfig().updated(**values)
    assert "\n" not in str(error.value)


def test_sampling_settings_through_set_and_back_to_greedy():
    decode = Config().with_overrides(["decode.sample_topk=0", "decode.n_best=8", "decode.temperature=0.7"]).decode
    assert (decode.sample_topk, decode.n_best, decode.beam_size, decode.temperature) == (0, 8, 5, 0.7)
    assert decode.hypotheses_per_sentence == 8
    assert Config().with_overrides(["decode.sample_topk=null"]).decode.sample_topk is None
    greedy = decode.greedy()
    assert (greedy.sample_topk, greedy.n_best, greedy.beam_size, greedy.temperature) == (None, 1, 1, 1.0)
    with pytest.raises(UserError, match=re.escape("decode.sample_topk must be an integer >= 0")):
        Config().with_overrides(["decode.sample_topk=-3"])


SERVER = DecodeConfig(beam_size=5, n_best=1)
LIMITS = Limits(max_sentences=4, max_beam=16)


def test_a_native_request_may_sample():
    asked = native_request({"sentences": ["a"], "sample_topk": 0, "temperature": 0.7, "seed": 9, "n_best": 8},
                           SERVER, LIMITS)
    chosen = asked.decode
    assert (chosen.sample_topk, chosen.temperature, chosen.seed, chosen.n_best, chosen.beam_size) == (0, 0.7, 9, 8, 5)
    sampling_server = SERVER.updated(sample_topk=10, temperature=0.5)
    searching = native_request({"sentences": ["a"], "sample_topk": None, "temperature": 1.0}, sampling_server, LIMITS)
    assert searching.decode.sample_topk is None


@pytest.mark.parametrize("fields, message", [
    ({"sample_topk": 0, "n_best": 17}, "Invalid request: n_best 17 is above this server's limit of 16"),
    ({"sample_topk": -1}, "Invalid request: decode.sample_topk must be an integer >= 0"),
    ({"sample_topk": 0, "temperature": 0}, "Invalid request: decode.temperature must be a number in [0.01, 100]"),
    ({"temperature": 3}, "Invalid request: decode.temperature 3.0 applies only when sampling"),
])
def test_a_native_request_with_bad_sampling_fields_is_a_400(fields, message):
    with pytest.raises(ServeError) as error:
        native_request({"sentences": ["a"], **fields}, SERVER, LIMITS)
    assert error.value.status == 400 and error.value.message.startswith(message)


def test_evaluate_keeps_sampled_translations_of_a_split_apart_from_searched_ones(tmp_path):
    from lstmmt.evaluate import split_hypothesis
    from lstmmt.rundir import RunDir

    run = RunDir(tmp_path)
    searched = split_hypothesis(run, "valid", "best", DecodeConfig(), run_beam_size=5)
    paths = {split_hypothesis(run, "valid", "best", DecodeConfig(sample_topk=k, seed=seed), run_beam_size=5)
             for k, seed in ((0, 1), (0, 2), (10, 1))}
    assert searched.name == "valid.hyp" and searched not in paths and len(paths) == 3
