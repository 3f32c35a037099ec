"""The run directory: every path a step reads or writes, checks that earlier steps ran, atomic writes.

Layout (documented in README.md):

    RUN/config.yaml                 resolved settings of every step
    RUN/tokenizer/spm.model|.vocab  joint SentencePiece model (or src.* and tgt.* when not joint)
    RUN/data/SPLIT.SIDE.ids.npy     token ids of one split and side, concatenated (int32, a standard .npy)
    RUN/data/SPLIT.SIDE.offsets.npy start of each sentence in the ids array (int64, length n+1)
    RUN/data/SPLIT.SIDE.txt         cleaned text of each split's pairs (valid/test: references for BLEU;
                                    train: the pairs kept, line for line with the encoded ones)
    RUN/data/train-sampledK.SIDE.*  the K-th sampled segmentation of train (tokenizer.sample_alpha)
    RUN/data/meta.json              line counts, filters applied, input files and their hashes
    RUN/checkpoints/                last.pt, best.pt, step-N.pt
    RUN/train.json                  written when training ends (not when interrupted): why, step, best BLEU
    RUN/shortlist.npz               vocabulary shortlist for search (`lstmmt shortlist`; lstmmt/shortlist.py)
    RUN/logs/train.log, metrics.jsonl
    RUN/translations/NAME.hyp       translate output
    RUN/scores/NAME.json            evaluate output (split-NAME.json for translations/NAME.hyp of --split,
                                    hyp-STEM.HASH.json or --name for --hyp)
    RUN/.lock                       held (flock) by preprocess, train and average; holds the holder's PID
    RUN/.preprocess/                while preprocess runs: the new config.yaml, tokenizer/ and data/

Outputs a user names (`-o`) go through write_output and check_output: atomic for files,
streamed into FIFOs, devices and descriptors, never one of the command's inputs nor a file
the run owns (RunDir.owns).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmmt.errors import UserError, io_context

SIDES = ("src", "tgt")


SAMPLED = "train-sampled"


def sampled_split(k: int) -> str:
    """The name of the K-th (from 1) sampled segmentation of the training split."""
    return f"{SAMPLED}{k}"


@dataclass(frozen=True)
class RunDir:
    """One run directory, the unit of state: each path of the layout above is a property (no step
    spells another step's file names), the checks that earlier steps ran (`require_preprocessed`,
    `require_checkpoint`) and the lock that keeps two writing steps out of one run (`lock`)."""

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
    def shortlist(self) -> Path:
        """shortlist.npz: target-piece candidates per source piece, for `decode.shortlist`."""
        return self.root / "shortlist.npz"

    @property
    def staging(self) -> RunDir:
        """.preprocess/: where preprocess builds config.yaml, tokenizer/ and data/ (a run layout of
        their own) before they replace the run's, so a failed or interrupted redo loses nothing."""
        return RunDir(self.root / ".preprocess")

    def owns(self, path: Path) -> bool:
        """Whether `path`, symlinks followed, is a file the steps write and read back (config.yaml,
        train.json, shortlist.npz, the lock, the training logs) or lies in tokenizer/, data/,
        checkpoints/, scores/ or .preprocess/, so no output a user names may replace it."""
        target = Path(os.path.realpath(path))
        files = (self.config, self.train_summary, self.shortlist, self.lock_file, self.metrics, self.train_log)
        folders = (self.tokenizer_dir, self.data_dir, self.checkpoints, self.scores, self.staging.root)
        return target in {Path(os.path.realpath(file)) for file in files} or any(
            target.is_relative_to(os.path.realpath(folder)) for folder in folders)

    def tokenizer_digest(self) -> str:
        """sha256 over the SentencePiece model files: equal only for the same tokenizer."""
        digest = hashlib.sha256()
        for model in sorted(self.tokenizer_dir.glob("*.model")):
            digest.update(model.name.encode() + b"\0" + model.read_bytes())
        return digest.hexdigest()

    @property
    def translations(self) -> Path:
        return self.root / "translations"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def learning_curve(self) -> Path:
        return self.logs / "learning_curve.png"

    def split_score(self, hyp: Path) -> Path:
        """scores/split-NAME.json: the score of translations/NAME.hyp, a stored split translated
        by `evaluate --split` (NAME is SPLIT, or SPLIT.CHECKPOINT.beamK... for other options)."""
        return self.scores / f"split-{hyp.name.removesuffix('.hyp')}.json"

    def hyp_score(self, hyp: Path, name: str | None = None) -> Path:
        """scores/NAME.json for `evaluate --hyp`: the given name, else one derived from the whole
        hypothesis path (its stem and a hash of its absolute path), so two files never share one."""
        if name is not None:
            if not re.fullmatch(r"[\w.+-]+", name) or name.startswith("."):
                raise UserError(f"--name {name!r}: use letters, digits and . _ + - only")
            return self.scores / f"{name}.json"
        digest = hashlib.sha256(str(Path(hyp).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        stem = re.sub(r"[^\w.+-]", "_", Path(hyp).stem) or "hyp"
        return self.scores / f"hyp-{stem}.{digest}.json"

    def stale_temporaries(self) -> list[Path]:
        """What a killed preprocess leaves: its staging folder (cleaned training text, half-trained
        tokenizers, part of the encoded data)."""
        return [self.staging.root] if self.staging.root.exists() else []

    def remove_stale_temporaries(self) -> None:
        """Remove stale_temporaries(); call it only while holding the lock of a step that writes them."""
        for path in self.stale_temporaries():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def read_meta(self) -> dict[str, Any]:
        """data/meta.json, checked to be what preprocess writes; a damaged one is a UserError."""
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.root} has no preprocessed data: "
                            f"run `lstmmt preprocess {self.root} ...` first") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if not (isinstance(meta, dict) and isinstance(meta.get("splits"), dict)
                and all(isinstance(v, dict) for v in meta["splits"].values())):
            raise UserError(f"{self.meta} is damaged (not the JSON preprocess writes): "
                            f"redo `lstmmt preprocess {self.root} ... --force`")
        return meta

    def check_unlocked(self, command: str) -> None:
        """Fail at once, as lock() would, if another process holds the run (a quick look before a
        command's slow start-up; the lock itself is taken later, by the step)."""
        if self.lock_file.exists():
            with self.lock(command):
                pass

    @contextmanager
    def lock(self, command: str, held: bool = True, writable: Path | None = None) -> Iterator[None]:
        """Hold RUN/.lock (an exclusive flock) while `command` writes the run; a second writer fails at
        once, naming the PID that holds it. The kernel drops the lock when its holder exits, so a
        killed process never leaves the run locked. held=False (other torchrun ranks) takes nothing.
        `writable`: a folder checked to be writable once the lock is held. An OSError without a
        file name raised inside is reported against the run directory."""
        if not held:
            yield
            return
        self.require_folder()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
                who = f"`lstmmt {holder[1]}` (PID {holder[0]})" if len(holder) >= 2 else "another lstmmt process"
                raise UserError(f"{self.root} is in use by {who}: wait for it to finish or stop it, "
                                f"then run `lstmmt {command}` again") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
            if writable is not None:
                require_writable(writable)
            with io_context(self.root):
                yield
        finally:
            os.close(fd)

    def ids(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.ids.npy"

    def offsets(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.offsets.npy"

    def text(self, split: str, side: str) -> Path:
        return self.data_dir / f"{split}.{side}.txt"

    def sampled_data(self) -> list[Path]:
        """The files of every sampled segmentation of train (tokenizer.sample_alpha)."""
        return sorted(self.data_dir.glob(f"{SAMPLED}*"))

    def has_split(self, split: str) -> bool:
        return self.offsets(split, "src").exists()

    def require_folder(self) -> None:
        """A UserError when the run's path is a file (a corpus or a release archive given as RUN)."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a run directory (nor a release)")

    def require_preprocessed(self) -> None:
        self.require_folder()
        if not self.root.is_dir():
            raise UserError(f"run directory {self.root} does not exist: run `lstmmt preprocess {self.root} ...` first")
        if not (self.config.exists() and self.meta.exists()):
            raise UserError(f"{self.root} has no preprocessed data: run `lstmmt preprocess {self.root} ...` first")
        self.read_meta()

    def require_checkpoint(self) -> None:
        self.require_preprocessed()
        if not any(self.checkpoints.glob("*.pt")):
            raise UserError(f"{self.root} has no trained model: run `lstmmt train {self.root}` first")


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks (corpora and weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_writable(directory: Path) -> None:
    """Create `directory` if needed and check a file can be written in it (before hours of work
    that end in a save); a read-only or full folder is a UserError naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix=".write-test."):
            pass
    except OSError as exc:
        raise UserError(f"cannot write in {directory}: {exc.strerror or exc}; make it writable and run again") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp_name))
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and (exc.filename is None or Path(exc.filename).name.startswith(f".{path.name}.")):
            exc.filename = str(path)  # the file the user knows, not the temporary one
        raise
    _fsync_dir(path.parent)


def check_output(output: Path, inputs: Iterable[Path] = (), run: RunDir | None = None) -> None:
    """Refuse, before any work, an output that would destroy what the command reads or keeps:
    one of its `inputs` (the same file under any name; a device or FIFO may be both) or a file
    the run directory owns."""
    if Path(output).is_dir():
        raise UserError(f"output {output} is a directory; give a file path")
    if run is not None and run.owns(output):
        raise UserError(f"output {output} belongs to the run {run.root} (a file its steps write and read back): "
                        "write it elsewhere")
    for source in inputs:
        if _same_file(source, output) and not streams_into(Path(output)):
            raise UserError(f"output {output} is the input {source}: it would be replaced by its own result; "
                            "write to another file")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # either is missing
        return False


def write_output(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(target) to write the output `path`, keeping what `path` is.

    A regular file or a new path is written atomically (atomic_write: `target` is a temporary
    file, renamed to `path` once complete); a symlink is followed and its target written so,
    and the link stays a link. A FIFO, a device (/dev/null) or an open descriptor (/dev/fd/N
    from `-o >(cmd)`, /dev/stdout) is `target` itself, written into, never replaced by a
    regular file. `write` opens `target` to append ("ab"; the temporary file is empty), so a
    descriptor the shell opened to append (`3>>log`) keeps what it holds.
    """
    path = Path(path)
    if streams_into(path):
        write(path)
    else:
        atomic_write(Path(os.path.realpath(path)), write)


def write_output_text(path: Path, text: str) -> None:
    """write_output of UTF-8 text."""

    def append(target: Path) -> None:
        with open(target, "a", encoding="utf-8") as file:
            file.write(text)

    write_output(path, append)


def streams_into(path: Path) -> bool:
    """Whether an output at `path` is written into rather than replaced: something that exists
    and is not a regular file (a FIFO, a device, ...), or an open descriptor."""
    try:
        kind = os.stat(path).st_mode
    except OSError:  # a new path, or a symlink to one
        return False
    return not stat.S_ISREG(kind) or _names_descriptor(Path(path))


def _names_descriptor(path: Path) -> bool:
    """Whether `path` leads through /proc (/dev/fd/N, /dev/stdout, /proc/self/fd/N): a file the
    shell opened, perhaps to append (`3>>log`), which a rename would take from under it."""
    for _ in range(40):  # the kernel's limit on symlinks followed in one path
        path = Path(os.path.realpath(path.parent), path.name)
        if path.parts[1:2] == ("proc",):
            return True
        if not path.is_symlink():
            return False
        path = path.parent / os.readlink(path)
    return False


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
