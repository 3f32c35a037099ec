"""Line streams for the translate and score steps: text in, text out, one output line per input line, in order.

Input is read as it becomes available: whatever lines are there (up to a chunk of 64
lines at first, doubling to 5,000) are translated, written and flushed before reading on.
From a file that means large chunks, sorted by length into well-filled batches (and the
first output soon); from a terminal or a pipe whose writer pauses it means each line is
answered at once (an interactive filter).

Lines end at "\n" only (CRLF works). The other characters str.splitlines() breaks on
(\r \v \f \x1c-\x1e \x85 \u2028 \u2029) become spaces inside an input line, as preprocess
does to the training text, and never appear inside an output line. A line with nothing to
translate (empty, whitespace, or only characters the tokenizer drops) gives an empty line;
invalid UTF-8 is replaced by U+FFFD with a warning naming the line; over-long lines are
truncated to decode.max_source_tokens with a warning naming the line. A line is cut to its
first decode.line_bytes bytes while it is read (the rest is skipped
up to its newline, with a warning), so memory stays bounded whatever the input.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from lstmmt import rundir
from lstmmt.console import stderr
from lstmmt.errors import UserError
from lstmmt.rundir import RunDir, check_output
from lstmmt.translator import Translation, Translator, as_dict

CHUNK_LINES = 5000
"""Most lines translated at once: enough to sort into full batches, bounded memory on big inputs."""
FIRST_CHUNK = 64
"""Most lines of the first chunk; chunks double from it up to CHUNK_LINES, so output starts soon."""
FORMATS = ("text", "jsonl")


def warn(message: str) -> None:
    """One warning line on stderr; the message is printed as it is (no rich markup)."""
    stderr.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def decode_line(raw: bytes, number: int, limit: int) -> str:
    """A line's text: cut to its first `limit` bytes (at a character boundary) with a warning
    when longer; invalid UTF-8 becomes U+FFFD with a warning naming the line."""
    if len(raw) > limit:
        warn(f"line {number}: longer than {limit:,} bytes, only the first {limit:,} read (the rest is skipped)")
        raw = _cut(raw, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        warn(f"line {number}: invalid UTF-8 replaced by U+FFFD")
        return raw.decode("utf-8", errors="replace")


def _cut(raw: bytes, limit: int) -> bytes:
    """raw[:limit], less a character split by the cut (its UTF-8 continuation bytes are 0b10xxxxxx)."""
    end = limit
    while end > max(0, limit - 3) and raw[end] & 0xC0 == 0x80:
        end -= 1
    return raw[:end]


def read_chunks(stream: BinaryIO, limit: int, chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of the input as it becomes available, in chunks of at most
64, 128, ... up to chunk_lines lines; each line cut to its first `limit` bytes (see `DecodeConfig.line_bytes`).

    Splitting on b"\n" only, so "\r\n" files count their lines right and a stray form feed
    or U+2028 inside a line cannot split it (the Translator turns it into a space).
    """
    number = 1
    for raws in _raw_chunks(stream, _chunk_sizes(chunk_lines), limit + 1):  # one byte more tells a line was cut
        yield number, [decode_line(raw, number + i, limit) for i, raw in enumerate(raws)]
        number += len(raws)


def _chunk_sizes(most: int) -> Iterator[int]:
    """FIRST_CHUNK, twice that, ... up to `most`, then `most` for ever."""
    size = min(FIRST_CHUNK, most)
    while True:
        yield size
        size = min(2 * size, most)


def _raw_chunks(stream: BinaryIO, sizes: Iterator[int], most: int) -> Iterator[list[bytes]]:
    """Raw lines, each cut to its first `most` bytes, in chunks of at most the next of `sizes`
    lines: from a file descriptor as they arrive; from an in-memory stream (no descriptor:
    everything is there already) full."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        chunk: list[bytes] = []
        size = next(sizes)
        for raw in stream:
            chunk.append(raw.removesuffix(b"\n")[:most])
            if len(chunk) == size:
                yield chunk
                chunk, size = [], next(sizes)
        if chunk:
            yield chunk
        return
    yield from _available_lines(fd, sizes, most)


class _LineStart:
    """The first `most` bytes of a line whose end has not arrived yet: however long the line,
    only they are kept."""

    def __init__(self, most: int) -> None:
        self.most, self.pieces, self.size = most, [], 0

    def add(self, data: bytes) -> None:
        if self.size < self.most:
            piece = data[: self.most - self.size]
            self.pieces.append(piece)
            self.size += len(piece)

    def take(self) -> bytes:
        line = b"".join(self.pieces)
        self.pieces, self.size = [], 0
        return line


def _available_lines(fd: int, sizes: Iterator[int], most: int) -> Iterator[list[bytes]]:
    """Complete lines read from `fd`, each cut to its first `most` bytes, handed on whenever no
    more input is ready at once (or a chunk is full). os.read blocks only while there is
    nothing to hand on; poll(0) tells whether more input is ready (always, for regular files;
    for a pipe or terminal, not once the writer pauses)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    lines: list[bytes] = []
    partial = _LineStart(most)  # the line whose end has not arrived yet
    size = next(sizes)
    while True:
        if lines and (len(lines) >= size or not poller.poll(0)):
            yield lines[:size]
            lines, size = lines[size:], next(sizes)
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            break
        first, *rest = data.split(b"\n")
        partial.add(first)
        if rest:
            lines.append(partial.take())
            lines.extend(line[:most] for line in rest[:-1])
            partial.add(rest[-1])
    if partial.size:
        lines.append(partial.take())
    while lines:
        yield lines[:size]
        lines, size = lines[size:], next(sizes)


def format_output(translation: Translation, n_best: int, line_index: int, output_format: str = "text") -> list[str]:
    """The output lines for one input line.

    text: the best translation, or with n_best > 1 one line per hypothesis as
    `index ||| translation ||| score` (Moses n-best style); a line with nothing to translate
    still gets its row: an empty line, or `index |||  ||| 0.0000`, so every input index
    appears. jsonl: one JSON object (see docs/api.md).
    """
    if output_format == "jsonl":
        return [json.dumps(as_dict(translation), ensure_ascii=False)]
    if n_best == 1:
        return [translation.text]
    if not translation.n_best:
        return [f"{line_index} |||  ||| 0.0000"]
    return [f"{line_index} ||| {c.text} ||| {c.score:.4f}" for c in translation.n_best]


def translate_stream(translator: Translator, source: BinaryIO, target: TextIO, output_format: str = "text",
                     alignment: bool = False, chunk_lines: int = CHUNK_LINES,
                     progress: Callable[[int], None] | None = None) -> int:
    """Translate `source` to `target` as input arrives, flushing after each chunk; returns the number of input lines."""
    total = 0
    for first, lines in read_chunks(source, translator.decode.line_bytes, chunk_lines):
        for offset, translation in enumerate(translator.translate(lines, alignment=alignment, first_line=first)):
            output = format_output(translation, translator.decode.n_best, first - 1 + offset, output_format)
            target.write("\n".join(output) + "\n")
        target.flush()
        total += len(lines)
        if progress is not None:
            progress(len(lines))
    return total


def open_input(path: str) -> BinaryIO:
    """stdin for "-", else the file, pipe or device at `path` (a directory or a missing path is a UserError)."""
    if path == "-":
        return sys.stdin.buffer
    check_paths([path], "-")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"input file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def check_paths(inputs: list[str], output: str, run: RunDir | None = None) -> None:
    """Refuse, before any work is done, missing inputs, directories as inputs or as the output,
    and an output that is one of the inputs or a file of `run` (rundir.check_output)."""
    if inputs.count("-") > 1:
        raise UserError("only one input can be - (stdin): give the others as files")
    for path in inputs:
        if path != "-" and Path(path).is_dir():
            raise UserError(f"input {path} is a directory; give a file, a pipe or - for stdin")
        if path != "-" and not Path(path).exists():
            raise UserError(f"input file not found: {path}")
    if output != "-":
        check_output(Path(output), [Path(path) for path in inputs if path != "-"], run)


def write_text_output(path: str, write: Callable[[TextIO], int]) -> int:
    """Call write(target) on stdout ("-") or on the output `path` as UTF-8 text, written as
    rundir.write_output writes (a file appears only when complete; FIFOs and devices stream).

    SIGTERM and SIGHUP become an exit that removes the temporary file (as any error does), so
    a killed translate leaves no `.OUT.*.tmp` beside its output.
    """
    if path == "-":
        return write(sys.stdout)
    counted: list[int] = []

    def as_text(file: Path) -> None:
        with open(file, "a", encoding="utf-8") as target:
            counted.append(write(target))

    with signals_exit():
        rundir.write_output(Path(path), as_text)
    return counted[0]


@contextlib.contextmanager
def signals_exit() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise SystemExit(128 + signal) instead of killing
    the process at once, so `finally` and `except BaseException` clean-ups run. Only the
    main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, exit_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def translate_file(translator: Translator, input_path: str, output_path: str, output_format: str = "text",
                   alignment: bool = False) -> int:
    """The translate step over files, pipes or stdin/stdout ('-'); a file output appears only when complete."""
    if output_format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if alignment and output_format != "jsonl":
        raise UserError("--alignment needs --format jsonl")
    check_paths([input_path], output_path)
    with open_input(input_path) as source:
        return write_text_output(output_path, lambda target: _with_progress(
            lambda advance: translate_stream(translator, source, target, output_format, alignment, progress=advance)))


def _with_progress(work: Callable[[Callable[[int], None]], int]) -> int:
    """Run work(advance) with a line counter on stderr when it is a terminal."""
    with Progress(SpinnerColumn(), TextColumn("{task.completed:,} lines"), TimeElapsedColumn(),
                  console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("lines", total=None)
        return work(lambda n: progress.advance(task, n))


def score_file(translator: Translator, src_path: str, tgt_path: str, output_path: str) -> int:
    """The score step: `score<TAB>log_prob` of each target line given its source line, 1:1.

    Different line counts are a UserError (and a file output is then not written).
    """
    check_paths([src_path, tgt_path], output_path)
    with open_input(src_path) as sources, open_input(tgt_path) as targets:
        def write(target: TextIO) -> int:
            total = 0
            for first, src, tgt in paired_chunks(sources, targets, src_path, tgt_path, translator.decode.line_bytes):
                for result in translator.score(src, tgt, first_line=first):
                    target.write(f"{result.score:.4f}\t{result.log_prob:.4f}\n")
                target.flush()
                total += len(src)
            return total

        return write_text_output(output_path, write)


def paired_chunks(sources: BinaryIO, targets: BinaryIO, src_path: str, tgt_path: str, limit: int,
                  chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first line number, source lines, target lines), read in step, chunk_lines pairs at a
    time, each line cut to `limit` bytes."""
    src_chunk: list[str] = []
    tgt_chunk: list[str] = []
    first = 1
    for number, (src, tgt) in enumerate(itertools.zip_longest(_lines(sources, limit), _lines(targets, limit)), start=1):
        if src is None or tgt is None:
            shorter = src_path if src is None else tgt_path
            raise UserError(f"{shorter} ends at line {number - 1}, before the other input: "
                            "score needs one target line per source line")
        src_chunk.append(src)
        tgt_chunk.append(tgt)
        if len(src_chunk) == chunk_lines:
            yield first, src_chunk, tgt_chunk
            first, src_chunk, tgt_chunk = number + 1, [], []
    if src_chunk:
        yield first, src_chunk, tgt_chunk


def _lines(stream: BinaryIO, limit: int) -> Iterator[str]:
    for _, lines in read_chunks(stream, limit):
        yield from lines
