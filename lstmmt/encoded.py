"""The encoded corpus on disk: per split and side, all token ids concatenated plus sentence offsets.

Two flat .npy arrays instead of one object per sentence (nanoGPT's prepare.py idea): they
open in milliseconds, and sentences are read from disk as batches need them, so training
memory does not grow with corpus size (beyond 12 bytes a sentence of offsets and lengths).
Sentence i is ids[offsets[i]:offsets[i + 1]]; offsets has n + 1 entries and starts at 0.
"""

from __future__ import annotations

import itertools
import os
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


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class EncodedSide:
    """One split and side of the encoded corpus, read from disk a sentence at a time.

    The offsets (8 bytes a sentence) are loaded; the ids stay in the file and each sentence
    is read with one pread(2). Unlike a memory map, reading never makes the file part of the
    process's memory, so training memory does not grow with the corpus (the kernel's page
    cache still keeps hot data fast).
    """

    def __init__(self, ids_path: Path, ids_start: int, offsets: np.ndarray) -> None:
        self._file = open(ids_path, "rb")  # closed with the object
        self._ids_start = ids_start  # byte offset of the first id, after the .npy header
        self._offsets = offsets
        self.lengths: np.ndarray = np.diff(offsets).astype(np.int32)
        """Token count of each sentence (int32)."""

    @classmethod
    def open(cls, run: RunDir, split: str, side: str) -> "EncodedSide":
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
            offsets = np.load(paths[1])
            with open(paths[0], "rb") as handle:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(handle))
                if read_header is None:
                    raise ValueError("unknown .npy format version")
                shape, _, dtype = read_header(handle)
                ids_start = handle.tell()
        except ValueError:
            raise damaged from None
        file_ids = (paths[0].stat().st_size - ids_start) // 4
        if dtype != np.int32 or len(shape) != 1 or shape[0] != file_ids:
            raise damaged
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != shape[0]:
            raise damaged
        return cls(paths[0], ids_start, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """The ids of sentence i (int32)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sentence {i} out of range for {n} sentences")
        i %= n
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        data = os.pread(self._file.fileno(), 4 * (end - start), self._ids_start + 4 * start)
        return np.frombuffer(data, dtype=np.int32)
