"""The run directory: every path a step reads or writes, checks that earlier steps ran, atomic writes.

Layout (documented in README.md):

    RUN/config.yaml                 resolved settings of every step
    RUN/tokenizer/spm.model|.vocab  joint SentencePiece model (or src.* and tgt.* when not joint)
    RUN/data/SPLIT.SIDE.ids.npy     token ids of one split and side, concatenated (int32, a standard .npy)
    RUN/data/SPLIT.SIDE.offsets.npy start of each sentence in the ids array (int64, length n+1)
    RUN/data/SPLIT.SIDE.txt         cleaned text of valid/test (references for BLEU)
    RUN/data/meta.json              line counts, filters applied, input files and their hashes
    RUN/checkpoints/                last.pt, best.pt, step-N.pt
    RUN/train.json                  written when training ends (not when interrupted): why, step, best BLEU
    RUN/logs/train.log, metrics.jsonl
    RUN/translations/NAME.hyp       translate output
    RUN/scores/NAME.json            evaluate output
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lstmmt.errors import UserError

SIDES = ("src", "tgt")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def meta(self) -> Path:
        return self.data_dir / "meta.json"

    @property
    def train_summary(self) -> Path:
        return self.root / "train.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def train_log(self) -> Path:
        return self.logs / "train.log"

    def checkpoint(self, name: str) -> Path:
        """checkpoints/NAME.pt: last, best, averaged or step-N."""
        return self.checkpoints / f"{name}.pt"

    @property
    def translations(self) -> Path:
        return self.root / "translations"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def ids(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.ids.npy"

    def offsets(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.offsets.npy"

    def text(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.txt"

    def has_split(self, split: str) -> bool:
        return self.offsets(split, "src").exists()

    def require_preprocessed(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"run directory {self.root} does not exist: run `lstmmt preprocess {self.root} ...` first")
        if not (self.config.exists() and self.meta.exists()):
            raise UserError(f"{self.root} has no preprocessed data: run `lstmmt preprocess {self.root} ...` first")

    def require_checkpoint(self) -> None:
        self.require_preprocessed()
        if not any(self.checkpoints.glob("*.pt")):
            raise UserError(f"{self.root} has no trained model: run `lstmmt train {self.root}` first")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
