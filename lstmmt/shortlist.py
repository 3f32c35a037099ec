"""Vocabulary shortlists: which target pieces a batch's source pieces allow (as Marian's --shortlist).

On a CPU the output layer (H or E x 8,000), its log-softmax and the top-k over beam x
vocabulary are most of a beam-search step. Most target pieces are never a plausible
translation of a given source sentence, so search may score only a few thousand:

    allowed(batch) = specials (PAD, UNK, BOS, EOS) + the `frequent` most frequent target pieces
                     + the `per_source` candidates of every source piece in the batch

Candidates come from the run's encoded training data. Counts are per sentence pair:
c(s) pairs whose source holds piece s, c(t) pairs whose target holds t, c(s, t) pairs
with both. The candidates of s are the `per_source` pieces t with the highest Dice score
2 c(s, t) / (c(s) + c(t)) (ties: larger c(s, t), then smaller id). Ranking by p(t|s) =
c(s, t) / c(s) instead would, for each s, rank targets by c(s, t) alone: the most frequent
target pieces, which the frequent list holds already. Dice prefers the pieces that occur
with s more than elsewhere, i.e. its translations.

RUN/shortlist.npz (numpy's npz, read with np.load(path, allow_pickle=False)) holds
`candidates` (source vocabulary x per_source, int32 target ids, -1 where a source piece
has fewer co-occurring targets), `always` (sorted int32: specials and frequent pieces)
and `meta` (a JSON string: settings, vocabulary sizes, training pairs, tokenizer digest).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lstmmt.encoded import EncodedSide
from lstmmt.errors import UserError
from lstmmt.rundir import RunDir, atomic_write
from lstmmt.tokenizer import EOS, PAD

FORMAT = 1
"""Version of the shortlist.npz layout, in its meta."""
SPECIALS = np.arange(PAD, EOS + 1, dtype=np.int32)
"""PAD, UNK, BOS, EOS: always allowed, so the allowed ids begin 0, 1, 2, 3 and a position in
the allowed list is the token's own id for each of them (search uses BOS and EOS by id)."""
BLOCK_SENTENCES = 4096
"""Sentence pairs counted per numpy pass."""
REDUCE_PAIRS = 1 << 24
"""Buffered (source, target) pair keys merged into the running counts beyond this many."""


@dataclass(frozen=True)
class Shortlist:
    """Candidate target pieces per source piece, and the pieces always allowed."""

    candidates: np.ndarray  # (source vocabulary, per_source) int32 target ids, -1 = none
    always: np.ndarray  # (M,) int32, sorted, starting with SPECIALS
    meta: dict[str, Any]

    def allowed(self, src: Tensor) -> Tensor:
        """The sorted target ids (1-D long, on src's device) that search may produce for a batch
        of source ids src (B, S): the union of its pieces' candidates and the always-allowed ones.
        Search works in positions of this list; position i is token allowed[i]."""
        pieces = np.unique(src.cpu().numpy())
        rows = self.candidates[pieces].ravel()
        ids = np.union1d(self.always, rows[rows >= 0])
        return torch.from_numpy(ids.astype(np.int64)).to(src.device)

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.savez would add ".npz" to the tmp name
                np.savez(handle, candidates=self.candidates, always=self.always, meta=np.array(json.dumps(self.meta)))

        atomic_write(path, write)

    @classmethod
    def load(cls, run: RunDir, src_vocab: int, tgt_vocab: int) -> Shortlist:
        """RUN/shortlist.npz, checked to belong to this run's tokenizer (UserError otherwise)."""
        path, remedy = run.shortlist, f"run `lstmmt shortlist {run.root}`"
        try:
            with np.load(path, allow_pickle=False) as data:
                candidates, always, meta = data["candidates"], data["always"], json.loads(str(data["meta"]))
        except FileNotFoundError:
            raise UserError(f"decode.shortlist is on, but {path} does not exist: {remedy} first "
                            "(or translate without --shortlist)") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            raise UserError(f"{path} is damaged (not the file `lstmmt shortlist` writes): {remedy} again") from None
        if (meta.get("format") != FORMAT or candidates.dtype != np.int32 or candidates.ndim != 2
                or candidates.shape[0] != src_vocab or always.dtype != np.int32
                or not np.array_equal(always[:len(SPECIALS)], SPECIALS)):
            raise UserError(f"{path} is damaged or from another version of lstmmt: {remedy} again")
        if meta.get("tokenizer_sha256") != run.tokenizer_digest() or meta.get("tgt_vocab") != tgt_vocab:
            raise UserError(f"{path} was built for another tokenizer (the run was preprocessed again since): "
                            f"{remedy} again")
        return cls(candidates, always, meta)

    def summary(self) -> str:
        """What it holds, in a few words (for the lines the commands print)."""
        m = self.meta
        return f"{m['per_source']} candidates per source piece, {m['frequent']} frequent target pieces"


def build(run: RunDir, per_source: int, frequent: int) -> Shortlist:
    """The shortlist of a preprocessed run, from its encoded training data (see the module docstring)."""
    if per_source < 0 or frequent < 0:
        raise UserError(f"--per-source and --frequent must be >= 0, got {per_source} and {frequent}")
    if per_source == 0 and frequent == 0:
        raise UserError("--per-source and --frequent are both 0: search could produce only the special pieces "
                        "(every output ⁇); give at least one of them a value > 0 (defaults 20 and 100)")
    from lstmmt.tokenizer import Tokenizer

    run.require_preprocessed()
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    src, tgt = EncodedSide.open(run, "train", "src"), EncodedSide.open(run, "train", "tgt")
    counts = count_pairs(src, tgt, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    meta = {"format": FORMAT, "score": "dice", "per_source": per_source, "frequent": frequent,
            "src_vocab": tokenizer.src_vocab_size, "tgt_vocab": tokenizer.tgt_vocab_size,
            "train_pairs": len(src), "tokenizer_sha256": run.tokenizer_digest()}
    return Shortlist(counts.candidates(per_source), counts.always(frequent), meta)


@dataclass
class PairCounts:
    """Sentence-pair counts of a parallel corpus: c(s), c(t), c(s, t) and target token frequencies."""

    src_pairs: np.ndarray  # (source vocabulary,) c(s)
    tgt_pairs: np.ndarray  # (target vocabulary,) c(t)
    tgt_tokens: np.ndarray  # (target vocabulary,) occurrences of t in the targets
    keys: np.ndarray  # (P,) int64 s * target vocabulary + t, sorted, unique
    both: np.ndarray  # (P,) int64 c(s, t) of each key

    def candidates(self, per_source: int) -> np.ndarray:
        """(source vocabulary, per_source) int32: each source piece's best targets by Dice, -1 padded."""
        vocab = len(self.tgt_pairs)
        s, t = self.keys // vocab, self.keys % vocab
        dice = 2.0 * self.both / (self.src_pairs[s] + self.tgt_pairs[t])
        order = np.lexsort((t, -self.both, -dice, s))  # by s, then best first
        s, t = s[order], t[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # where each source piece's run begins
        rank = np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))
        keep = rank < per_source
        table = np.full((len(self.src_pairs), per_source), -1, dtype=np.int32)
        table[s[keep], rank[keep]] = t[keep]
        return table

    def always(self, frequent: int) -> np.ndarray:
        """The specials and the `frequent` most frequent target pieces seen in training, sorted."""
        by_frequency = np.argsort(-self.tgt_tokens, kind="stable")[:frequent]
        return np.union1d(SPECIALS, by_frequency[self.tgt_tokens[by_frequency] > 0]).astype(np.int32)


def count_pairs(src: EncodedSide, tgt: EncodedSide, src_vocab: int, tgt_vocab: int) -> PairCounts:
    """Count the corpus in blocks; memory grows with the distinct (s, t) pairs, not the corpus."""
    src_pairs = np.zeros(src_vocab, dtype=np.int64)
    tgt_pairs = np.zeros(tgt_vocab, dtype=np.int64)
    tgt_tokens = np.zeros(tgt_vocab, dtype=np.int64)
    keys, both = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    buffered: list[np.ndarray] = []
    for (src_ids, src_lengths), (tgt_ids, tgt_lengths) in zip(src.blocks(BLOCK_SENTENCES), tgt.blocks(BLOCK_SENTENCES)):
        src_sentence, src_piece = _distinct(src_ids, src_lengths, src_vocab)
        tgt_sentence, tgt_piece = _distinct(tgt_ids, tgt_lengths, tgt_vocab)
        src_pairs += np.bincount(src_piece, minlength=src_vocab)
        tgt_pairs += np.bincount(tgt_piece, minlength=tgt_vocab)
        tgt_tokens += np.bincount(tgt_ids, minlength=tgt_vocab)
        buffered.append(_pair_keys(src_sentence, src_piece, tgt_sentence, tgt_piece, len(src_lengths), tgt_vocab))
        if sum(map(len, buffered)) > REDUCE_PAIRS:
            keys, both = _merge(keys, both, buffered)
            buffered = []
    keys, both = _merge(keys, both, buffered)
    return PairCounts(src_pairs, tgt_pairs, tgt_tokens, keys, both)


def _distinct(ids: np.ndarray, lengths: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sentence's distinct pieces: (sentence index, piece) pairs, sorted by sentence."""
    sentence = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    unique = np.unique(sentence * vocab + ids)
    return unique // vocab, unique % vocab


def _pair_keys(src_sentence: np.ndarray, src_piece: np.ndarray, tgt_sentence: np.ndarray, tgt_piece: np.ndarray,
               sentences: int, tgt_vocab: int) -> np.ndarray:
    """s * tgt_vocab + t for every distinct source piece s and target piece t of each sentence pair."""
    tgt_count = np.bincount(tgt_sentence, minlength=sentences)
    tgt_start = np.r_[0, np.cumsum(tgt_count)[:-1]]
    repeats = tgt_count[src_sentence]  # each source piece pairs with every target piece of its sentence
    first = np.repeat(np.cumsum(repeats) - repeats, repeats)
    position = np.arange(int(repeats.sum())) - first
    tgt_index = tgt_start[np.repeat(src_sentence, repeats)] + position
    return np.repeat(src_piece, repeats) * tgt_vocab + tgt_piece[tgt_index]


def _merge(keys: np.ndarray, both: np.ndarray, buffered: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Running (keys, counts) with the buffered keys (one per co-occurrence) added."""
    if not buffered:
        return keys, both
    new, new_counts = np.unique(np.concatenate(buffered), return_counts=True)
    merged, inverse = np.unique(np.r_[keys, new], return_inverse=True)
    return merged, np.bincount(inverse, weights=np.r_[both, new_counts], minlength=len(merged)).astype(np.int64)


def coverage(shortlist: Shortlist, src: EncodedSide, tgt: EncodedSide, batch: int = 64) -> tuple[float, float]:
    """On a split: the mean number of allowed target ids for batches of `batch` consecutive
    sentences, and the share of reference target tokens inside their batch's allowed set."""
    sizes, covered, total = [], 0, 0
    for (src_ids, _), (tgt_ids, _) in zip(src.blocks(batch), tgt.blocks(batch)):
        allowed = shortlist.allowed(torch.from_numpy(src_ids.astype(np.int64))).numpy()
        sizes.append(len(allowed))
        covered += int(np.isin(tgt_ids, allowed).sum())
        total += len(tgt_ids)
    return (float(np.mean(sizes)) if sizes else 0.0), (covered / total if total else 1.0)
