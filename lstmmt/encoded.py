"""The encoded corpus on disk: per split and side, all token ids concatenated plus sentence offsets.

Two flat .npy arrays instead of one object per sentence (nanoGPT's prepare.py idea): they
open in milliseconds, and sentences and offsets are read from disk as batches need them,
so training memory does not grow with corpus size.
Sentence i is ids[offsets[i]:offsets[i + 1]]; offsets has n + 1 entries and starts at 0.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

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
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
                  "shape": (self._tokens,)}

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


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _DiskArray:
    """A one-dimensional .npy file read slice by slice with pread(2): nothing is loaded or
    memory-mapped, so reading never makes the file part of the process's memory (the
    kernel's page cache still keeps hot data fast)."""

    def __init__(self, path: Path) -> None:
        """ValueError if the file is not a one-dimensional .npy array as long as its header says."""
        self._file = open(path, "rb")  # closed with the object
        read_header = _HEADER_READERS.get(np.lib.format.read_magic(self._file))
        if read_header is None:
            raise ValueError("unknown .npy format version")
        shape, _, self.dtype = read_header(self._file)
        self._start = self._file.tell()
        if len(shape) != 1 or (os.fstat(self._file.fileno()).st_size - self._start) // self.dtype.itemsize != shape[0]:
            raise ValueError("not a complete one-dimensional array")
        self.size: int = shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Elements start .. stop-1."""
        itemsize = self.dtype.itemsize
        data = os.pread(self._file.fileno(), itemsize * (stop - start), self._start + itemsize * start)
        return np.frombuffer(data, dtype=self.dtype)


class Sentences:
    """Some sentences of one side, in a chosen order: their lengths in memory, their ids read
    from disk when indexed. Collate and validation index these like a list of id arrays."""

    def __init__(self, ids: _DiskArray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self._ids, self._starts = ids, starts
        self.lengths = lengths
        """Token count of each sentence (int32)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self._starts[i])
        return self._ids.read(start, start + int(self.lengths[i]))


class EncodedSide:
    """One split and side of the encoded corpus, on disk.

    Neither the ids nor the offsets are loaded: `select` reads the offsets of the sentences
    a training window needs (see batching.epoch_windows), and each sentence is one
    pread(2), so training memory does not grow with the corpus.
    """

    def __init__(self, ids: _DiskArray, offsets: _DiskArray) -> None:
        self._ids, self._offsets = ids, offsets

    @classmethod
    def open(cls, run: RunDir, split: str, side: str) -> EncodedSide:
        """Open one split and side; UserError if preprocess did not write it or its two files disagree."""
        paths = run.ids(split, side), run.offsets(split, side)
        for path in paths:
            if not path.is_file():
                raise UserError(
                    f"{run.root} has no encoded {split} data ({path} is missing): "
                    f"run `lstmmt preprocess {run.root} ...` with a {split} source first"
                )
        damaged = UserError(
            f"{paths[0]} and {paths[1]} do not match (damaged or from different runs): "
            f"redo `lstmmt preprocess {run.root} ... --force`"
        )
        try:
            ids, offsets = _DiskArray(paths[0]), _DiskArray(paths[1])
        except ValueError:
            raise damaged from None
        if ids.dtype != np.int32 or offsets.dtype != np.int64 or offsets.size == 0:
            raise damaged
        if offsets.read(0, 1)[0] != 0 or offsets.read(offsets.size - 1, offsets.size)[0] != ids.size:
            raise damaged
        return cls(ids, offsets)

    def __len__(self) -> int:
        return self._offsets.size - 1

    def select(self, ranges: Sequence[tuple[int, int]]) -> Sentences:
        """The sentences of the (start, stop) index ranges, in that order."""
        offsets = [self._offsets.read(start, stop + 1) for start, stop in ranges] or [np.zeros(1, dtype=np.int64)]
        starts = np.concatenate([o[:-1] for o in offsets])
        lengths = np.concatenate([np.diff(o) for o in offsets]).astype(np.int32)
        return Sentences(self._ids, starts, lengths)

    def blocks(self, sentences: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, lengths) of consecutive blocks of at most `sentences` sentences: the block's
        ids concatenated and each sentence's length, two reads a block (for whole-corpus
        statistics such as the shortlist, where one read per sentence would be slow)."""
        for start in range(0, len(self), sentences):
            offsets = self._offsets.read(start, min(start + sentences, len(self)) + 1)
            yield self._ids.read(int(offsets[0]), int(offsets[-1])), np.diff(offsets)

    def all(self) -> Sentences:
        """Every sentence (validation and test splits, which are small)."""
        return self.select([(0, len(self))])

    def __getitem__(self, i: int) -> np.ndarray:
        """The ids of sentence i (int32)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sentence {i} out of range for {n} sentences")
        return self.select([(i % n, i % n + 1)])[0]
