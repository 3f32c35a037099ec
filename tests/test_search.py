"""Search against a hand-built model whose probabilities are written out, and against a real one."""

import math
import threading

import pytest
import torch

from lstmmt.config import DecodeConfig
from lstmmt.decoding import for_search, in_threads, search_corpus, search_workers
from lstmmt.search import beam_search, greedy_search
from tests.helpers import LENGTHS, SRC, VOCAB, A, B, C, TableModel, random_batch, random_model


def test_beam_search_finds_the_best_hypothesis_greedy_misses():
    greedy = greedy_search(TableModel(), SRC, LENGTHS, DecodeConfig(length_penalty=0.0))[0]
    assert greedy.tokens == [A] and math.isclose(greedy.log_prob, math.log(0.6 * 0.4), rel_tol=1e-6)
    best = beam_search(TableModel(), SRC, LENGTHS, DecodeConfig(beam_size=2, length_penalty=0.0))[0][0]
    assert best.tokens == [B]
    assert math.isclose(best.log_prob, math.log(0.4 * 0.9), rel_tol=1e-6)


def test_n_best_is_sorted_and_scores_are_length_normalised():
    hyps = beam_search(TableModel(), SRC, LENGTHS, DecodeConfig(beam_size=3, length_penalty=1.0, n_best=3))[0]
    # [B]: ln(.36)/2 = -0.51; [A, C]: ln(.6*.3*1)/3 = -0.57; [A]: ln(.24)/2 = -0.71
    assert [h.tokens for h in hyps] == [[B], [A, C], [A]]
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        assert math.isclose(h.score, h.log_prob / (len(h.tokens) + 1), rel_tol=1e-6)


def test_max_length_forces_an_end():
    # max_len_a=0, max_len_b=1: only EOS may be produced... which the table never gives first,
    # so the hypothesis is the forced EOS alone.
    hyps = beam_search(TableModel(), SRC, LENGTHS, DecodeConfig(beam_size=2, max_len_a=0.0, max_len_b=1))
    assert hyps[0][0].tokens == []
    assert greedy_search(TableModel(), SRC, LENGTHS, DecodeConfig(max_len_a=0.0, max_len_b=1))[0].tokens == []


def test_the_first_step_runs_one_row_per_sentence_then_the_beam():
    """All beams start as the same BOS, so the first decoder step needs one row per sentence;
    the beam fills from its best candidates, and a vocabulary smaller than the beam still works."""

    class Counting(TableModel):
        def __init__(self):
            self.rows: list[int] = []  # decoder rows of each step

        def decode_step(self, prev, memory, state):
            self.rows.append(prev.size(0))
            return super().decode_step(prev, memory, state)

    model = Counting()
    src, lengths = torch.cat([SRC, SRC]), torch.cat([LENGTHS, LENGTHS])
    hyps = beam_search(model, src, lengths, DecodeConfig(beam_size=3, length_penalty=1.0, n_best=3))
    assert model.rows[:2] == [2, 6]
    assert [[h.tokens for h in sentence] for sentence in hyps] == [[[B], [A, C], [A]]] * 2
    model.rows.clear()
    wide = beam_search(model, SRC, LENGTHS, DecodeConfig(beam_size=VOCAB + 2, length_penalty=1.0))
    assert model.rows[0] == 1 and wide[0][0].tokens == [B]


def test_beam_one_equals_greedy():
    model = random_model()
    src, lengths = random_batch(16)
    greedy = greedy_search(model, src, lengths, DecodeConfig())
    beam = [h[0] for h in beam_search(model, src, lengths, DecodeConfig(beam_size=1))]
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], rel=1e-5)
    assert any(len(h.tokens) > 2 for h in greedy)


def test_beam_search_result_does_not_depend_on_the_batch():
    model = random_model()
    src, lengths = random_batch(8)
    together = beam_search(model, src, lengths, DecodeConfig(beam_size=4))
    for i in range(src.size(0)):
        alone_src = src[i : i + 1, : int(lengths[i])]
        alone = beam_search(model, alone_src, lengths[i : i + 1], DecodeConfig(beam_size=4))
        assert alone[0][0].tokens == together[i][0].tokens
        assert math.isclose(alone[0][0].score, together[i][0].score, rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_translations_do_not_depend_on_the_batch_size(precision):
    """search_corpus with one sentence per batch and with all in one batch: the same outputs
    (with the model prepared for search as translate prepares it: bf16 weights for bf16)."""
    model = for_search(random_model(seed=3), torch.device("cpu"), precision)
    src, lengths = random_batch(40, seed=5)
    sentences = [row[: int(n) - 1].numpy() for row, n in zip(src, lengths)]

    def translate(batch_tokens: int) -> list[list[int]]:
        options = DecodeConfig(beam_size=5, batch_tokens=batch_tokens)
        return [hyps[0].tokens for hyps in search_corpus(model, sentences, options, torch.device("cpu"), precision)]

    one_by_one, all_at_once = translate(1), translate(100_000)
    assert one_by_one == all_at_once
    assert sum(map(len, all_at_once)) > 40


def test_batches_searched_by_two_worker_threads_translate_as_one_thread_does():
    """decode.workers 2 shares the batches among two threads: the same translations, and the
    caller keeps its torch thread count."""
    model = for_search(random_model(seed=3), torch.device("cpu"), "fp32")
    src, lengths = random_batch(40, seed=5)
    sentences = [row[: int(n) - 1].numpy() for row, n in zip(src, lengths)]
    threads = torch.get_num_threads()

    def translate(workers: int) -> list[list[int]]:
        options = DecodeConfig(beam_size=5, batch_tokens=60, workers=workers)  # about 10 batches
        return [hyps[0].tokens for hyps in search_corpus(model, sentences, options, torch.device("cpu"), "fp32")]

    assert translate(2) == translate(1)
    assert torch.get_num_threads() == threads


def test_in_threads_keeps_the_order_and_gives_each_worker_its_share_of_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        seen = in_threads(lambda item: (item, threading.get_ident(), torch.get_num_threads()), list(range(12)), 2)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)
    assert [item for item, _, _ in seen] == list(range(12))
    assert threading.get_ident() not in {ident for _, ident, _ in seen}
    assert {count for _, _, count in seen} == {2}


def test_in_threads_passes_on_a_worker_error():
    def work(item: int) -> int:
        if item == 3:
            raise ValueError("bad batch")
        return item

    with pytest.raises(ValueError, match="bad batch"):
        in_threads(work, list(range(8)), 2)


def test_search_workers_one_per_cpu_thread_at_most_one_per_batch_and_one_on_a_gpu():
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    assert search_workers(DecodeConfig(), cpu, 100) == threads
    assert search_workers(DecodeConfig(), cpu, 1) == 1
    assert search_workers(DecodeConfig(workers=3), cpu, 100) == 3
    assert search_workers(DecodeConfig(workers=3), torch.device("cuda"), 100) == 1
