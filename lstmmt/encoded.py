"""The encoded corpus on disk: per split and side, all token ids concatenated plus sentence offsets.

Two flat .npy arrays instead of one object per sentence (nanoGPT's prepare.py idea): they
open memory-mapped in milliseconds, so training memory does not grow with corpus size.
Sentence i is ids[offsets[i]:offsets[i + 1]]; offsets has n + 1 entries and starts at 0.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np

from lstmmt.errors import UserError
from lstmmt.rundir import RunDir, atomic_write


def pack(sentences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated ids (int32) and per-sentence lengths (int64) of `sentences`."""
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    ids = np.fromiter(itertools.chain.from_iterable(sentences), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths


def write_side(run: RunDir, split: str, side: str, sentences: list[list[int]]) -> None:
    """Write one split and side; each file atomically (a temporary file renamed into place)."""
    write_packed(run, split, side, *pack(sentences))


def write_packed(run: RunDir, split: str, side: str, ids: np.ndarray, lengths: np.ndarray) -> None:
    """write_side for sentences already packed, so big corpora never exist as Python lists of ints."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(ids):
        raise ValueError(f"lengths add up to {offsets[-1]} tokens but there are {len(ids)} ids")
    _save(run.ids(split, side), ids.astype(np.int32, copy=False))
    _save(run.offsets(split, side), offsets)  # last: RunDir.has_split looks for the offsets


def _save(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle, because np.save would add ".npy" to a tmp name
            np.save(handle, array)

    atomic_write(path, write)


class EncodedSide:
    """One split and side of the encoded corpus, memory-mapped."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self._ids = ids
        self._offsets = offsets
        self.lengths: np.ndarray = np.diff(offsets)
        """Token count of each sentence (int64)."""

    @classmethod
    def open(cls, run: RunDir, split: str, side: str) -> "EncodedSide":
        """Map the two arrays read-only; UserError if preprocess did not write them or they disagree."""
        paths = run.ids(split, side), run.offsets(split, side)
        for path in paths:
            if not path.is_file():
                raise UserError(
                    f"{run.root} has no encoded {split} data ({path} is missing): "
                    f"run `lstmmt preprocess {run.root} ...` with a {split} source first"
                )
        ids, offsets = (np.load(path, mmap_mode="r") for path in paths)
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids):
            raise UserError(
                f"{paths[0]} and {paths[1]} do not match (damaged or from different runs): "
                f"redo `lstmmt preprocess {run.root} ... --force`"
            )
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """The ids of sentence i (an int32 view into the mapped file)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sentence {i} out of range for {n} sentences")
        i %= n
        return self._ids[self._offsets[i] : self._offsets[i + 1]]
