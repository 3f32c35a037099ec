"""Greedy search, batched beam search and sampling over any model with the step API (`StepModel`).

Search never knows it is an LSTM, or one model: an ensemble is one more StepModel
(lstmmt/decoding.py). Beam search keeps all live sentences x beams as one tensor program:
each step is one top-k over beam x vocabulary per sentence; hypotheses that end are set
aside, and a sentence with `beam_size` finished hypotheses stops searching. Finished sentences
leave the batch in steps (see `_BeamState._rows_to_keep`), so the batch takes only a few
shapes as it shrinks. Greedy search and sampling extend one hypothesis per row a token at a
time (`_token_by_token`), picking the most likely token or drawing one. Every setting comes
from one DecodeConfig.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from lstmmt.config import DecodeConfig
from lstmmt.tokenizer import BOS, EOS

R = TypeVar("R", bound="Rows")


class Rows(Protocol):
    """Memory or decoder state: anything whose rows search can pick and reorder."""

    def select(self: R, index: Tensor) -> R:
        """The rows at `index` (a 1-D long tensor), in that order."""
        ...


class StepModel(Protocol):
    """What search needs of a model.

    Memory has one row per sentence. During beam search the state and prev_tokens have one
    row per hypothesis, the `beam` hypotheses of a sentence in consecutive rows, and
    decode_step must pair row i with memory row i // beam (so encoder outputs are never
    copied per beam). The log-probabilities decode_step returns must be a new float32
    tensor: search adds scores to it in place.
    """

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Rows, Rows]:
        """src (B, S) padded ids ending in EOS, src_lengths (B,) -> (memory, first decoder state)."""
        ...

    def decode_step(self, prev_tokens: Tensor, memory: Any, state: Any) -> tuple[Tensor, Rows]:
        """prev_tokens (N,) -> (log-probabilities (N, V) float32, next state)."""
        ...


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids without BOS/EOS
    score: float  # log-probability / length ** length_penalty (length counts EOS)
    log_prob: float


def max_lengths(src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Maximum output length (tokens incl. EOS) per sentence: a * source length + b, at least 1."""
    return (src_lengths.double() * a + b).floor().clamp(min=1).long()


def search(model: StepModel, src: Tensor, src_lengths: Tensor, decode: DecodeConfig) -> list[list[Hypothesis]]:
    """The decode.n_best best hypotheses per sentence: greedy search for beam size 1 (the
    same result as a beam of one, faster), beam search otherwise; with decode.sample_topk,
    n_best samples, drawn with the batch's own generator (`seeded_generator`)."""
    if decode.sample_topk is not None:
        return sample_search(model, src, src_lengths, decode, seeded_generator(decode.seed, src))
    if decode.beam_size == 1:
        return [[hyp] for hyp in greedy_search(model, src, src_lengths, decode)]
    return beam_search(model, src, src_lengths, decode)


@torch.inference_mode()
def greedy_search(model: StepModel, src: Tensor, src_lengths: Tensor, decode: DecodeConfig) -> list[Hypothesis]:
    """The most probable next token at every step, for a whole batch; one hypothesis per sentence."""
    memory, state = model.encode(src, src_lengths)
    limits = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b).to(src.device)
    return _token_by_token(model, memory, state, limits, decode.length_penalty, _most_likely)


@torch.inference_mode()
def sample_search(model: StepModel, src: Tensor, src_lengths: Tensor, decode: DecodeConfig,
                  generator: torch.Generator) -> list[list[Hypothesis]]:
    """decode.n_best independent samples per sentence, best first: every token drawn by
    `sample_tokens` (decode.sample_topk, decode.temperature) with `generator`, which must be on
    src's device. A sample's score is the model's log-probability of it, normalised by length
    as in beam search, so samples and beam search hypotheses compare."""
    n = decode.n_best
    memory, state = model.encode(src, src_lengths)
    # each sentence's n samples in consecutive rows, paired with its one memory row as a beam's are
    copies = torch.arange(src.size(0), device=src.device).repeat_interleave(n)  # (B * n,)
    limits = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b).to(src.device).index_select(0, copies)
    draw = functools.partial(sample_tokens, topk=decode.sample_topk, temperature=decode.temperature,
                             generator=generator)
    samples = _token_by_token(model, memory, state.select(copies), limits, decode.length_penalty, draw)
    return [sorted(samples[i:i + n], key=lambda h: -h.score) for i in range(0, len(samples), n)]


def sample_tokens(log_probs: Tensor, topk: int, temperature: float, generator: torch.Generator) -> Tensor:
    """One token per row (N,) drawn from softmax(log_probs / temperature) over the row's `topk`
    most likely tokens (all of them for 0); log_probs (N, V)."""
    logits, ids = log_probs / temperature, None
    if 0 < topk < logits.size(-1):
        logits, ids = logits.topk(topk, dim=-1)  # (N, topk)
    drawn = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (N, 1) positions in logits
    return (drawn if ids is None else ids.gather(1, drawn)).squeeze(1)


def seeded_generator(seed: int, src: Tensor) -> torch.Generator:
    """The random generator of one batch, on src's device, seeded from `seed` and the batch's
    source ids src (B, S) alone: a batch draws the same samples whichever worker thread searches
    it, in whatever order or call, while batches of other sentences draw apart (one stream for
    every chunk of a long input would repeat its draws)."""
    ids = src.to("cpu", torch.int64).numpy()
    key = np.array([seed, *ids.shape], dtype=np.int64).tobytes() + ids.tobytes()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return torch.Generator(device=src.device).manual_seed(int.from_bytes(digest, "little"))


def _most_likely(log_probs: Tensor) -> Tensor:
    """The most probable token of each row: (N, V) -> (N,)."""
    return log_probs.argmax(dim=-1)


def _token_by_token(model: StepModel, memory: Rows, state: Rows, limits: Tensor, length_penalty: float,
                    choose: Callable[[Tensor], Tensor]) -> list[Hypothesis]:
    """One hypothesis per decoder row, extended by the token `choose` picks from the row's
    log-probabilities (N, V) -> (N,) until EOS or the row's length limit (limits (N,), on the
    device); its log-probability sums the model's log-probabilities of the tokens chosen."""
    rows, device = limits.size(0), limits.device
    prev = torch.full((rows,), BOS, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    log_prob = torch.zeros(rows, dtype=torch.float64, device=device)
    steps = []
    for t in range(int(limits.max())):
        log_probs, state = model.decode_step(prev, memory, state)
        prev = choose(log_probs).masked_fill(done, EOS)
        prev = prev.masked_fill(limits <= t + 1, EOS)  # the last allowed position ends the sentence
        log_prob += log_probs.gather(1, prev.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0)
        steps.append(prev)
        done |= prev == EOS
        if bool(done.all()):
            break
    tokens = [row[: row.index(EOS)] if EOS in row else row for row in torch.stack(steps, dim=1).tolist()]
    return [Hypothesis(t, lp / (len(t) + 1) ** length_penalty, lp) for t, lp in zip(tokens, log_prob.tolist())]


@torch.inference_mode()
def beam_search(model: StepModel, src: Tensor, src_lengths: Tensor, decode: DecodeConfig) -> list[list[Hypothesis]]:
    """The decode.n_best hypotheses per sentence, best first. With beam_size 1 this is greedy search."""
    beam_size, n_best = decode.beam_size, decode.n_best
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and beam_size")
    memory, state = model.encode(src, src_lengths)
    limits = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b)
    search = _BeamState(src.size(0), beam_size, limits, src.device)
    while search.searching:  # the first step has one row per sentence; advance widens it to the beam
        log_probs, state = model.decode_step(search.tokens[:, -1], memory, state)
        reorder, keep = search.advance(log_probs, decode.length_penalty)
        if keep is not None:
            memory = memory.select(keep)
        state = state.select(reorder)
    nothing = Hypothesis([], float("-inf"), float("-inf"))  # only if the model gave EOS probability 0 at the limit
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] or [nothing] for hyps in search.finished]


class _BeamState:
    """Bookkeeping of one beam search: live hypotheses as device tensors, finished ones as
    lists. Which sentences are in the batch, their length limits and the finished lists live
    on the host, so a step copies from the device once (see `advance`): on a GPU every
    copy to the host waits for all queued work."""

    def __init__(self, batch: int, beam_size: int, limits: Tensor, device: torch.device):
        self.beam_size, self.device = beam_size, device
        self.active = list(range(batch))  # corpus rows of the sentences in the batch
        self.limits = limits.tolist()  # max output length incl. EOS, per corpus row
        self.searching = batch  # sentences not done (the others stay only as padding)
        # Search starts from one hypothesis per sentence (all beams would be the same BOS), so
        # the first decoder step runs on `batch` rows rather than batch x beam.
        self.tokens = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
        self.scores = torch.zeros((batch, 1), device=device)  # (active, width) summed log-probabilities
        self.finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    def advance(self, log_probs: Tensor, length_penalty: float) -> tuple[Tensor, Tensor | None]:
        """Take one step; returns the row order for the decoder state and, if sentences
        finished, the rows of memory (sentences) to keep (None when all are still active)."""
        n, beam_size, vocab = len(self.active), self.beam_size, log_probs.size(-1)
        width = self.scores.size(1)  # live hypotheses per sentence: 1 at the first step, then beam
        step = self.tokens.size(1)  # tokens generated after this step, EOS included
        at_limit = [self.limits[row] <= step for row in self.active]
        log_probs = log_probs.view(n, width, vocab)
        if any(at_limit):
            log_probs = self._force_eos(log_probs, at_limit)
        # in place: one pass less over beam x vocab
        candidates = log_probs.add_(self.scores.unsqueeze(-1)).view(n, width * vocab)
        top_scores, top_ids = candidates.topk(min(2 * beam_size, width * vocab), dim=-1)  # (n, 2*beam_size)
        top_beams, top_tokens = top_ids // vocab, top_ids % vocab
        is_eos = top_tokens == EOS

        self._finish(top_scores, top_beams, is_eos, step, length_penalty)
        # Both conditions only ever turn on, so sentences kept as padding stay done.
        done = [len(self.finished[row]) >= beam_size or limit for row, limit in zip(self.active, at_limit)]
        done_mask = torch.tensor(done, device=self.device)

        # Continue with the best `beam_size` candidates that did not end (none for finished sentences).
        alive = min(beam_size, top_scores.size(1))  # fewer only for a vocabulary smaller than the beam
        alive_scores, pick = top_scores.masked_fill(is_eos | done_mask.unsqueeze(1), float("-inf")).topk(alive, dim=-1)
        alive_beams, alive_tokens = top_beams.gather(1, pick), top_tokens.gather(1, pick)
        rows = (torch.arange(n, device=self.device).unsqueeze(1) * width + alive_beams)  # (n, alive) old row ids
        self.searching = done.count(False)
        kept = self._rows_to_keep(done)
        keep = torch.tensor(kept, dtype=torch.long, device=self.device)
        reorder = rows.index_select(0, keep).view(-1)
        self.tokens = torch.cat([self.tokens.index_select(0, reorder), alive_tokens.index_select(0, keep).view(-1, 1)],
                                dim=1)
        self.scores = alive_scores.index_select(0, keep)
        self.active = [self.active[i] for i in kept]
        return reorder, keep if len(kept) < n else None

    def _rows_to_keep(self, done: list[bool]) -> list[int]:
        """The sentences to keep in the batch: all still searching, plus finished ones as padding
        up to the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... rows. oneDNN compiles kernels per
        batch shape, and a batch that shrank by one sentence at a time would meet hundreds of
        shapes (and overflow its cache); this way it meets a few, at most a third of rows idle."""
        size = _bucket(self.searching)
        if size >= len(done):
            return list(range(len(done)))
        searching_first = [i for i, d in enumerate(done) if not d] + [i for i, d in enumerate(done) if d]
        return sorted(searching_first[:size])

    def _force_eos(self, log_probs: Tensor, at_limit: list[bool]) -> Tensor:
        """At a sentence's last allowed position, EOS is the only choice."""
        forced = torch.full_like(log_probs, float("-inf"))
        forced[..., EOS] = log_probs[..., EOS]
        return torch.where(torch.tensor(at_limit, device=self.device).view(-1, 1, 1), forced, log_probs)

    def _finish(self, top_scores: Tensor, top_beams: Tensor, is_eos: Tensor, step: int, length_penalty: float) -> None:
        """Set aside hypotheses ending in EOS that rank within the top `beam_size` candidates.

        The one copy to the host of the step: for the top `beam_size` candidates of every
        sentence, whether it ends, its score and its tokens so far (n x beam x step ids, a few
        kilobytes), so that finishing never goes back to the device."""
        n, beam_size, step_tokens = top_scores.size(0), self.beam_size, self.tokens.size(1)
        ranked = min(beam_size, top_scores.size(1))  # the candidates that rank within the top `beam_size`
        beams = top_beams[:, :ranked, None].expand(n, ranked, step_tokens)
        histories = self.tokens.view(n, -1, step_tokens).gather(1, beams)
        packed = torch.cat([top_scores[:, :ranked, None].double(), is_eos[:, :ranked, None].double(),
                            histories.double()], dim=2)
        host = packed.cpu().numpy()  # (n, ranked, 2 + step)
        ended = (host[:, :, 1] > 0) & np.isfinite(host[:, :, 0])
        for row, candidate in zip(*np.nonzero(ended)):
            sentence = self.finished[self.active[row]]
            if len(sentence) >= beam_size:
                continue
            log_prob = float(host[row, candidate, 0])
            tokens = host[row, candidate, 3:].astype(np.int64).tolist()  # without the leading BOS
            sentence.append(Hypothesis(tokens, log_prob / step**length_penalty, log_prob))


def _bucket(count: int) -> int:
    """The smallest of 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (powers of two and 3/4 of them) >= count."""
    power = 1 << max(count - 1, 0).bit_length() if count else 0
    return power * 3 // 4 if power >= 4 and count <= power * 3 // 4 else power
