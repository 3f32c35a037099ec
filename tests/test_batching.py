"""Token-budget batches and the windowed epoch order training reads the corpus in."""

import numpy as np
import pytest

from lstmmt.batching import BLOCK, epoch_batches, epoch_windows, token_batches, window_batches


def test_token_batches_respect_the_budget_and_keep_the_order() -> None:
    lengths = np.array([3, 5, 2, 9, 4, 4, 30, 1])
    order = np.argsort(lengths, kind="stable")
    batches = token_batches(order, lengths, 12)
    assert np.concatenate(batches).tolist() == order.tolist()
    for batch in batches:
        assert len(batch) == 1 or lengths[batch].max() * len(batch) <= 12  # a 30-token sentence gets its own batch


@pytest.mark.parametrize("sentences", [1, 999, 1000, 4321])
def test_each_epoch_reads_every_sentence_once_in_bounded_windows(sentences: int) -> None:
    windows = epoch_windows(sentences, 2 * BLOCK, seed=3, epoch=0)
    covered = [i for window in windows for start, stop in window for i in range(start, stop)]
    assert sorted(covered) == list(range(sentences))
    assert all(sum(stop - start for start, stop in window) <= 2 * BLOCK for window in windows)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    assert epoch_windows(10_500, 3000, seed=1, epoch=2) == epoch_windows(10_500, 3000, seed=1, epoch=2)
    assert epoch_windows(10_500, 3000, seed=1, epoch=2) != epoch_windows(10_500, 3000, seed=1, epoch=3)
    # Blocks mix across windows: a window is not a contiguous slice of the corpus.
    windows = epoch_windows(10_500, 3000, seed=1, epoch=0)
    assert any(len(window) > 1 and window[1][0] != window[0][1] for window in windows)


def test_window_batches_sort_by_length_and_cover_the_window() -> None:
    rng = np.random.default_rng(0)
    tgt = rng.integers(3, 40, 500).astype(np.int32)
    src = tgt + rng.integers(-2, 3, 500).astype(np.int32)  # translations have similar lengths
    batches = window_batches(src, tgt, 400, seed=1, epoch=0, window=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    padded = sum((np.maximum(src, tgt)[b].max() + 1) * len(b) for b in batches)
    assert padded < 1.25 * (np.maximum(src, tgt) + 1).sum()  # length sorting keeps padding low
    again = window_batches(src, tgt, 400, seed=1, epoch=0, window=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = window_batches(src, tgt, 400, seed=1, epoch=0, window=1)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other))


def test_epoch_batches_read_every_pair_once_from_disk(tmp_path) -> None:
    """Windows of 1,000 sentences over a 2,500-pair corpus: each pair arrives once, source and
    target together, and no batch goes over the budget."""
    from lstmmt.encoded import EncodedSide, write_side
    from lstmmt.rundir import RunDir

    rng = np.random.default_rng(1)
    run = RunDir(tmp_path)
    src = [[i] + [7] * int(n) for i, n in enumerate(rng.integers(0, 20, 2500))]  # sentence i starts with i
    write_side(run, "train", "src", src)
    write_side(run, "train", "tgt", [[i, i] for i in range(2500)])
    sides = EncodedSide.open(run, "train", "src"), EncodedSide.open(run, "train", "tgt")
    seen = []
    batches = epoch_batches(*sides, batch_tokens=200, window_sentences=1000, seed=1, epoch=0)
    for src_window, tgt_window, indices in batches:
        assert len(src_window) <= 1000
        rows = [(src_window[i].tolist(), tgt_window[i].tolist()) for i in indices]
        assert all(s[0] == t[0] for s, t in rows)
        assert len(rows) == 1 or max(max(len(s), len(t)) + 1 for s, t in rows) * len(rows) <= 200
        seen += [s for s, _ in rows]
    assert sorted(seen) == sorted(src)
