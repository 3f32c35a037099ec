"""The encoded corpus on disk: per split and side, all token ids concatenated plus sentence offsets.

Two flat .npy arrays instead of one object per sentence (nanoGPT's prepare.py idea): they
open memory-mapped in milliseconds, so training memory does not grow with corpus size.
Sentence i is ids[offsets[i]:offsets[i + 1]]; offsets has n + 1 entries and starts at 0.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
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


class SideWriter:
    """Writes one split and side chunk by chunk, so a corpus never has to fit in memory.

    Ids go to a temporary file as they come; `close` writes the .npy (header, then the ids
    copied over) and the offsets, each atomically. Only the lengths (8 bytes a sentence)
    stay in memory.
    """

    def __init__(self, run: RunDir, split: str, side: str) -> None:
        self.ids_path, self.offsets_path = run.ids(split, side), run.offsets(split, side)
        self.ids_path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = tempfile.TemporaryFile(dir=self.ids_path.parent)
        self._tokens = 0
        self._lengths: list[np.ndarray] = []

    def add(self, sentences: Sequence[Sequence[int]]) -> None:
        ids, lengths = pack(sentences)
        self._raw.write(ids.tobytes())
        self._tokens += len(ids)
        self._lengths.append(lengths)

    def close(self) -> int:
        """Write the arrays (offsets last: RunDir.has_split looks for them); returns the sentence count."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False, "shape": (self._tokens,)}

        def write_ids(tmp: Path) -> None:
            self._raw.seek(0)
            with open(tmp, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                shutil.copyfileobj(self._raw, handle, 1 << 20)

        atomic_write(self.ids_path, write_ids)
        self._raw.close()
        _save(self.offsets_path, offsets)
        return len(lengths)


def write_side(run: RunDir, split: str, side: str, sentences: list[list[int]]) -> None:
    """Write one split and side at once (small data, tests)."""
    writer = SideWriter(run, split, side)
    writer.add(sentences)
    writer.close()


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
        self.lengths: np.ndarray = np.diff(offsets).astype(np.int32)
        """Token count of each sentence (int32: 4 bytes a sentence is what training keeps in memory)."""

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
