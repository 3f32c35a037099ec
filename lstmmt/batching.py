"""Token-budget, length-bucketed batches and padding.

Sentences of similar length go together so little compute is spent on padding; a batch
holds as many sentences as fit `batch_tokens` padded tokens. The training order of an
epoch is a pure function of (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would.

Training reads the corpus a window at a time (Marian's maxi-batches): the corpus is cut
into blocks of BLOCK consecutive sentences, an epoch deals the shuffled blocks into windows
of about `train.window_sentences` sentences, and each window is sorted by length, cut into
batches and shuffled on its own. Memory then depends on the window, not the corpus; a
corpus smaller than one window is sorted and shuffled whole.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lstmmt.tokenizer import BOS, EOS, PAD

if TYPE_CHECKING:
    from lstmmt.encoded import EncodedSide, Sentences


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + EOS, padded
    src_lengths: Tensor  # (B,) source lengths incl. EOS
    tgt_in: Tensor | None  # (B, T) BOS + target ids, padded
    tgt_out: Tensor | None  # (B, T) target ids + EOS, padded
    indices: np.ndarray  # (B,) positions of these sentences in what collate read them from
    tgt_tokens: int  # real target tokens (incl. EOS), for loss normalisation and tokens/s

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`; from pinned memory (see `pin_memory`) the copies do not block."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory, so copies to a GPU run asynchronously."""
        return self._map(Tensor.pin_memory)

    def _map(self, function: Callable[[Tensor], Tensor]) -> Batch:
        move = lambda t: None if t is None else function(t)  # noqa: E731
        return Batch(move(self.src), move(self.src_lengths), move(self.tgt_in), move(self.tgt_out), self.indices,
                     self.tgt_tokens)


def pad(sequences: Sequence[np.ndarray], prefix: int | None = None, suffix: int | None = None) -> Tensor:
    """Right-padded (B, L) int64 tensor of sequences, each with optional prefix/suffix token."""
    extra = (prefix is not None) + (suffix is not None)
    out = np.full((len(sequences), max(len(s) for s in sequences) + extra), PAD, dtype=np.int64)
    start = int(prefix is not None)
    for row, seq in enumerate(sequences):
        if prefix is not None:
            out[row, 0] = prefix
        out[row, start : start + len(seq)] = seq
        if suffix is not None:
            out[row, start + len(seq)] = suffix
    return torch.from_numpy(out)


def collate(indices: np.ndarray, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray] | None = None) -> Batch:
    """Build a Batch from the sentences at `indices` (src/tgt are indexable corpora of id arrays)."""
    src_seqs = [src[i] for i in indices]
    src_lengths = torch.tensor([len(s) + 1 for s in src_seqs], dtype=torch.int64)
    if tgt is None:
        return Batch(pad(src_seqs, suffix=EOS), src_lengths, None, None, indices, 0)
    tgt_seqs = [tgt[i] for i in indices]
    tokens = sum(len(t) + 1 for t in tgt_seqs)
    return Batch(pad(src_seqs, suffix=EOS), src_lengths, pad(tgt_seqs, prefix=BOS), pad(tgt_seqs, suffix=EOS), indices,
                 tokens)


def token_batches(order: np.ndarray, lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Cut `order` (sentence indices, sorted by length) into batches of at most batch_tokens padded tokens.

    `lengths` gives each sentence's padded cost per row (e.g. max(src, tgt) + 1). A sentence longer
    than the budget still gets a batch of its own.
    """
    batches, start, longest = [], 0, 0
    for pos, idx in enumerate(order):
        longest_with = max(longest, int(lengths[idx]))
        if pos > start and longest_with * (pos - start + 1) > batch_tokens:
            batches.append(order[start:pos])
            start, longest_with = pos, int(lengths[idx])
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches


BLOCK = 1000
"""Consecutive sentences that stay together when an epoch shuffles the corpus into windows."""


def epoch_windows(sentences: int, window_sentences: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The windows of one epoch in order, each a list of (start, stop) sentence ranges: a
    pure function of (seed, epoch) that covers every sentence exactly once."""
    rng = np.random.default_rng([seed, epoch])
    blocks = [(start, min(start + BLOCK, sentences)) for start in range(0, sentences, BLOCK)]
    shuffled = [blocks[i] for i in rng.permutation(len(blocks))]
    per_window = max(1, window_sentences // BLOCK)
    return [shuffled[i : i + per_window] for i in range(0, len(shuffled), per_window)]


VARIANT_STREAM = 7
"""Keeps epoch_variant's random numbers apart from those epoch_windows draws for (seed, epoch)."""


def epoch_variant(variants: int, seed: int, epoch: int) -> int:
    """Which segmentation of the training data an epoch reads: 0, the usual one, or one of
    `variants` sampled ones (tokenizer.sample_alpha). Each cycle of variants + 1 epochs reads
    every segmentation once, in an order that is a pure function of (seed, cycle)."""
    cycle, place = divmod(epoch, variants + 1)
    return int(np.random.default_rng([seed, cycle, VARIANT_STREAM]).permutation(variants + 1)[place])


def window_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, batch_tokens: int, seed: int, epoch: int, window: int,
) -> list[np.ndarray]:
    """The batches of one window (positions in it), in order: a pure function of (seed, epoch, window).

    Sentences are sorted by (target, source) length with random tie-breaking, cut into
    token-budget batches, and the batch order is shuffled.
    """
    rng = np.random.default_rng([seed, epoch, window])
    noise = rng.random(len(src_lengths), dtype=np.float32)  # random tie-breaking; 4 bytes a sentence
    order = np.lexsort((noise, src_lengths, tgt_lengths))
    del noise
    cost = np.maximum(src_lengths, tgt_lengths) + 1
    batches = token_batches(order, cost, batch_tokens)
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(
    src: EncodedSide, tgt: EncodedSide, batch_tokens: int, window_sentences: int, seed: int, epoch: int,
) -> Iterator[tuple[Sentences, Sentences, np.ndarray]]:
    """Every training batch of one epoch in order, as (source window, target window, positions
    in them): a pure function of (seed, epoch). One window's lengths are in memory at a time."""
    for number, ranges in enumerate(epoch_windows(len(src), window_sentences, seed, epoch)):
        src_window, tgt_window = src.select(ranges), tgt.select(ranges)
        for indices in window_batches(src_window.lengths, tgt_window.lengths, batch_tokens, seed, epoch, number):
            yield src_window, tgt_window, indices


def prefetched(batches: Iterator[tuple[Batch, Any, Any]], device: torch.device) -> Iterator[tuple[Batch, Any, Any]]:
    """The items of `batches` (a Batch first, then anything). On a GPU a background thread
    reads ahead, so reading sentences from disk and padding them overlap the training step,
    and pins the batches, so their copy to the GPU does not block. On a CPU the same work
    would compete with the step for the same cores: it runs inline."""
    if device.type != "cuda":
        return batches
    return read_ahead(batches, lambda item: (item[0].pin_memory(), *item[1:]))


def read_ahead(items: Iterator[Any], transform: Callable[[Any], Any], depth: int = 2) -> Iterator[Any]:
    """transform(item) for each item, computed by a background thread up to `depth` items
    ahead; its exceptions are raised here, and it stops when the caller stops reading."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(transform(item)):
                    return
            put(end)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the reading thread)
            put(exc)

    thread = threading.Thread(target=produce, name="lstmmt-read-ahead", daemon=True)
    thread.start()
    try:
        while (value := ready.get()) is not end:
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)
