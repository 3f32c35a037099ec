"""Driving search and forced decoding over many sentences, and ensembles as one step model.

Everything here works on token ids and any `StepModel` (lstmmt/search.py): sentences are
sorted by length into token-budget batches, searched (over a vocabulary shortlist when
given: `Restricted`, `search_batch`) or force-decoded in the decode precision, and the
results put back in input order. Text, files and checkpoints are the
business of lstmmt/translator.py and the steps above it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from lstmmt.batching import collate, token_batches
from lstmmt.config import DecodeConfig
from lstmmt.device import autocast, default_batch_tokens, search_batch_sources
from lstmmt.model import Seq2Seq
from lstmmt.search import Hypothesis, StepModel, search
from lstmmt.shortlist import Shortlist
from lstmmt.tokenizer import BOS, PAD


def for_search(model: Seq2Seq, device: torch.device, precision: str, quantize: str = "none") -> Seq2Seq:
    """The model on `device` in eval mode. For bf16 search on CPU its weights become bf16
    once, where autocast alone casts each weight again at every decoder step (a fifth of
    beam-search time); on GPUs autocast keeps the LSTM on its usual cuDNN path. quantize
    "int8": an int8 copy for CPU search (lstmmt/quantize.py; int8_precision checked the device)."""
    if quantize == "int8":
        from lstmmt.quantize import quantize_int8

        return quantize_int8(model)
    model = model.to(device).eval()
    return model.to(torch.bfloat16) if precision == "bf16" and device.type == "cpu" else model


class Members(NamedTuple):
    """The memories (or states) of an ensemble's members, one each; rows selected in all alike."""

    parts: tuple[Any, ...]

    def select(self, index: Tensor) -> Members:
        return Members(tuple(part.select(index) for part in self.parts))


class Ensemble:
    """Several step models as one: each next-token distribution is the mean of the members'
    log-probabilities. Search sees one more StepModel and does not change."""

    def __init__(self, members: Sequence[StepModel]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = list(members)

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Members, Members]:
        encoded = [member.encode(src, src_lengths) for member in self.members]
        return Members(tuple(m for m, _ in encoded)), Members(tuple(s for _, s in encoded))

    def decode_step(self, prev_tokens: Tensor, memory: Members, state: Members) -> tuple[Tensor, Members]:
        """Mean log-probabilities (N, V), a new tensor as the step API asks, and every member's next state."""
        steps = [member.decode_step(prev_tokens, m, s) for member, m, s in zip(self.members, memory.parts, state.parts)]
        return torch.stack([log_probs for log_probs, _ in steps]).mean(dim=0), Members(tuple(s for _, s in steps))


def step_model(models: Sequence[StepModel]) -> StepModel:
    """One model as itself (no averaging pass per step), several as their Ensemble."""
    return models[0] if len(models) == 1 else Ensemble(models)


class Restricted:
    """One model whose output layer covers only the target ids `ids` of a batch's shortlist.

    Search runs in positions of `ids` and never knows: the log-probabilities have V' columns,
    and the tokens it feeds back are positions, mapped to full ids here for the embedding.
    The specials lead `ids` (lstmmt/shortlist.py), so BOS and EOS are their own positions.
    The output weight and bias are sliced once per batch (model.output_layer.rows), not per step.
    """

    def __init__(self, model: Seq2Seq, ids: Tensor):
        self.model, self.ids = model, ids
        self.rows = model.output_layer.rows(ids)

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Any, Any]:
        return self.model.encode(src, src_lengths)

    def decode_step(self, prev_tokens: Tensor, memory: Any, state: Any) -> tuple[Tensor, Any]:
        """prev_tokens (N,) positions in ids -> log-probabilities (N, V') over ids, the next state."""
        return self.model.decode_step(self.ids[prev_tokens], memory, state, self.rows)


def restricted(model: StepModel, ids: Tensor) -> StepModel:
    """`model` (a Seq2Seq, or an Ensemble of them) with every output layer cut down to `ids`;
    an ensemble averages its members' distributions over the same ids."""
    if isinstance(model, Ensemble):
        return Ensemble([restricted(member, ids) for member in model.members])
    if isinstance(model, Seq2Seq):
        return Restricted(model, ids)
    raise TypeError(f"a vocabulary shortlist needs Seq2Seq models (or an Ensemble of them), not {type(model).__name__}")


def search_batch(model: StepModel, src: Tensor, src_lengths: Tensor, decode: DecodeConfig,
                 shortlist: Shortlist | None = None) -> list[list[Hypothesis]]:
    """search() of one batch; with a shortlist, over the target ids it allows for this batch's
    source pieces (the one place search is narrowed; sampling draws among them), and the
    hypotheses' tokens mapped back to full ids."""
    if shortlist is None:
        return search(model, src, src_lengths, decode)
    ids = shortlist.allowed(src)
    found = search(restricted(model, ids), src, src_lengths, decode)
    full = ids.tolist()
    return [[replace(hyp, tokens=[full[t] for t in hyp.tokens]) for hyp in hyps] for hyps in found]


def search_corpus(model: StepModel, sentences: Sequence[np.ndarray], decode: DecodeConfig, device: torch.device,
                  precision: str, shortlist: Shortlist | None = None) -> list[list[Hypothesis]]:
    """Search every sentence (source ids without EOS); results in input order.

    Sorting by length keeps padding low; the batch budget counts source tokens x beams (or
    samples), by default capped on a CPU with a shortlist (lstmmt.device.search_batch_sources).
    Each sentence's result does not depend on the batch it lands in, except with a
    shortlist, whose allowed ids are the union over the batch (see search_batch), and when
    sampling, whose draws are seeded per batch (lstmmt.search.seeded_generator: the same
    batches, the same samples). On a CPU the batches are shared among decode.workers threads
    (`search_workers`).
    """
    lengths = np.array([len(s) + 1 for s in sentences], dtype=np.int64)
    sources = search_batch_sources(device, decode.batch_tokens, decode.hypotheses_per_sentence, shortlist is not None)
    batches = token_batches(np.argsort(lengths, kind="stable"), lengths, sources)

    def search_one(indices: np.ndarray) -> list[list[Hypothesis]]:
        batch = collate(indices, sentences).to(device)
        with autocast(device, precision):
            return search_batch(model, batch.src, batch.src_lengths, decode, shortlist)

    results: list[list[Hypothesis]] = [[] for _ in sentences]
    for indices, found in zip(batches, in_threads(search_one, batches, search_workers(decode, device, len(batches)))):
        for index, hyps in zip(indices, found):
            results[index] = hyps
    return results


def search_workers(decode: DecodeConfig, device: torch.device, batches: int) -> int:
    """How many batches to search at once: decode.workers, by default one per torch CPU thread;
    never more than there are batches, and one on a GPU (its kernels fill it from one thread)."""
    if device.type != "cpu":
        return 1
    return max(1, min(decode.workers or torch.get_num_threads(), batches))


T = TypeVar("T")
U = TypeVar("U")


def in_threads(work: Callable[[T], U], items: Sequence[T], workers: int) -> list[U]:
    """work(item) for every item, results in order; with workers > 1 on that many threads,
    each with an equal share of this thread's torch CPU threads.

    Why: search runs hundreds of small steps per batch, and its work between the matrix
    products (Python bookkeeping, top-k, copies) runs on one thread; two batches on one torch
    thread each searched 1.12-1.17x faster than one batch on two (docs/performance.md).
    torch releases the GIL inside its kernels, and a thread's torch thread count is its own
    (OpenMP), so the caller's stays as it was.
    """
    if workers <= 1:
        return [work(item) for item in items]
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lstmmt-search",
                              initializer=torch.set_num_threads, initargs=(max(1, threads // workers),))
    try:
        return list(pool.map(work, items))
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, batches not started are dropped
        torch.set_num_threads(threads)  # threads started later take torch's last setting: make it the caller's again


@dataclass
class Forced:
    """Forced decoding of one sentence pair."""

    log_probs: np.ndarray  # (T+1,) log-probability of each target token and of EOS
    attention: np.ndarray | None  # (T+1, S+1) weights over source tokens and EOS, when asked for


def force_corpus(model: StepModel, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], decode: DecodeConfig,
                 device: torch.device, precision: str, attention_of: Sequence[Seq2Seq] = ()) -> list[Forced]:
    """Teacher-forced step log-probabilities of each target (ids without BOS/EOS) given its
    source, in input order; with `attention_of`, also the mean attention of those models."""
    lengths = np.array([max(len(s), len(t)) + 1 for s, t in zip(sources, targets)], dtype=np.int64)
    budget = decode.batch_tokens or default_batch_tokens(device, training=False)
    results: list[Forced | None] = [None] * len(sources)
    for indices in token_batches(np.argsort(lengths, kind="stable"), lengths, budget):
        batch = collate(indices, sources, targets).to(device)
        with autocast(device, precision), recording_attention(attention_of) as attention:
            log_probs = forced_log_probs(model, batch.src, batch.src_lengths, batch.tgt_out)
        weights = attention() if attention_of else None
        for row, index in enumerate(indices):
            steps, positions = len(targets[index]) + 1, len(sources[index]) + 1
            results[index] = Forced(log_probs[row, :steps].double().cpu().numpy(),
                                    None if weights is None else weights[row, :steps, :positions].float().cpu().numpy())
    return results  # type: ignore[return-value]  # every index is in exactly one batch


@torch.inference_mode()
def forced_log_probs(model: StepModel, src: Tensor, src_lengths: Tensor, tgt_out: Tensor) -> Tensor:
    """Log-probability (B, T) of each token of tgt_out (targets + EOS, PAD-padded), feeding
    the reference tokens through the same step API search uses, so scores are comparable
    with search scores; 0 at padding."""
    memory, state = model.encode(src, src_lengths)
    prev = torch.full((src.size(0),), BOS, dtype=torch.long, device=src.device)
    steps = []
    for t in range(tgt_out.size(1)):
        log_probs, state = model.decode_step(prev, memory, state)
        prev = tgt_out[:, t]
        steps.append(log_probs.gather(1, prev.unsqueeze(1)).squeeze(1))
    return torch.stack(steps, dim=1).masked_fill(tgt_out == PAD, 0.0)


@contextlib.contextmanager
def recording_attention(models: Sequence[Seq2Seq]) -> Iterator[Any]:
    """While active, every attention call of `models` is recorded; yields a function giving
    the recorded weights (B, steps, S), concatenated over steps and averaged over models.

    A forward hook recomputes the weights from the attention's own inputs, so the model
    needs no extra output for this."""
    records: list[list[Tensor]] = [[] for _ in models]
    hooks = [model.attention.register_forward_hook(
        lambda module, args, _output, record=record: record.append(module.weights(*args)))
        for model, record in zip(models, records)]
    try:
        yield lambda: torch.stack([torch.cat(record, dim=1).float() for record in records]).mean(dim=0)
    finally:
        for hook in hooks:
            hook.remove()
