"""The translate and score steps: text in, text out, exactly one output line per input line, in order.

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
truncated to decode.max_source_tokens with a warning naming the line.
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
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from lstmmt.errors import UserError
from lstmmt.rundir import atomic_write
from lstmmt.translator import Translation, Translator, as_dict

stderr = Console(stderr=True)

CHUNK_LINES = 5000
"""Most lines translated at once: enough to sort into full batches, bounded memory on big inputs."""
FIRST_CHUNK = 64
"""Most lines of the first chunk; chunks double from it up to CHUNK_LINES, so output starts soon."""
FORMATS = ("text", "jsonl")


def warn(message: str) -> None:
    """One warning line on stderr; the message is printed as it is (no rich markup)."""
    stderr.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def decode_line(raw: bytes, number: int) -> str:
    """A line's text; invalid UTF-8 becomes U+FFFD with a warning naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        warn(f"line {number}: invalid UTF-8 replaced by U+FFFD")
        return raw.decode("utf-8", errors="replace")


def read_chunks(stream: BinaryIO, chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of the input as it becomes available, in chunks of at most
64, 128, ... up to chunk_lines lines.

    Splitting on b"\n" only, so "\r\n" files count their lines right and a stray form feed
    or U+2028 inside a line cannot split it (the Translator turns it into a space).
    """
    number = 1
    for raws in _raw_chunks(stream, _chunk_sizes(chunk_lines)):
        yield number, [decode_line(raw, number + i) for i, raw in enumerate(raws)]
        number += len(raws)


def _chunk_sizes(most: int) -> Iterator[int]:
    """FIRST_CHUNK, twice that, ... up to `most`, then `most` for ever."""
    size = min(FIRST_CHUNK, most)
    while True:
        yield size
        size = min(2 * size, most)


def _raw_chunks(stream: BinaryIO, sizes: Iterator[int]) -> Iterator[list[bytes]]:
    """Raw lines in chunks of at most the next of `sizes` lines: from a file descriptor as
    they arrive; from an in-memory stream (no descriptor: everything is there already) full."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        chunk: list[bytes] = []
        size = next(sizes)
        for raw in stream:
            chunk.append(raw.removesuffix(b"\n"))
            if len(chunk) == size:
                yield chunk
                chunk, size = [], next(sizes)
        if chunk:
            yield chunk
        return
    yield from _available_lines(fd, sizes)


def _available_lines(fd: int, sizes: Iterator[int]) -> Iterator[list[bytes]]:
    """Complete lines read from `fd`, handed on whenever no more input is ready at once (or a
    chunk is full). os.read blocks only while there is nothing to hand on; poll(0) tells
    whether more input is ready (always, for regular files; for a pipe or terminal, not once
    the writer pauses)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    lines: list[bytes] = []
    partial: list[bytes] = []  # pieces of a line whose end has not arrived yet
    size = next(sizes)
    while True:
        if lines and (len(lines) >= size or not poller.poll(0)):
            yield lines[:size]
            lines, size = lines[size:], next(sizes)
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            break
        if b"\n" not in data:
            partial.append(data)
            continue
        first, *rest = data.split(b"\n")
        lines.append(b"".join(partial) + first)
        lines.extend(rest[:-1])
        partial = [rest[-1]] if rest[-1] else []
    if partial:
        lines.append(b"".join(partial))
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
                     progress: Optional[Callable[[int], None]] = None) -> int:
    """Translate `source` to `target` as input arrives, flushing after each chunk; returns the number of input lines."""
    total = 0
    for first, lines in read_chunks(source, chunk_lines):
        for offset, translation in enumerate(translator.translate(lines, alignment=alignment, first_line=first)):
            target.write("\n".join(format_output(translation, translator.decode.n_best, first - 1 + offset, output_format)) + "\n")
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


def check_paths(inputs: list[str], output: str) -> None:
    """Refuse missing inputs, directories as inputs or as the output, before any work is done."""
    for path in inputs:
        if path != "-" and Path(path).is_dir():
            raise UserError(f"input {path} is a directory; give a file, a pipe or - for stdin")
        if path != "-" and not Path(path).exists():
            raise UserError(f"input file not found: {path}")
    if output != "-" and Path(output).is_dir():
        raise UserError(f"output {output} is a directory; give a file path or - for stdout")


def write_output(path: str, write: Callable[[TextIO], int]) -> int:
    """Call write(target) on stdout ("-") or on a temporary file renamed to `path` when complete.

    SIGTERM and SIGHUP become an exit that removes the temporary file (as any error does), so
    a killed translate leaves no `.OUT.*.tmp` beside its output.
    """
    if path == "-":
        return write(sys.stdout)
    counted: list[int] = []

    def to_file(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as target:
            counted.append(write(target))

    with signals_exit():
        atomic_write(Path(path), to_file)
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
        return write_output(output_path, lambda target: _with_progress(
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
            for first, src, tgt in paired_chunks(sources, targets, src_path, tgt_path):
                for result in translator.score(src, tgt, first_line=first):
                    target.write(f"{result.score:.4f}\t{result.log_prob:.4f}\n")
                target.flush()
                total += len(src)
            return total

        return write_output(output_path, write)


def paired_chunks(sources: BinaryIO, targets: BinaryIO, src_path: str, tgt_path: str,
                  chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first line number, source lines, target lines), read in step, chunk_lines pairs at a time."""
    src_chunk: list[str] = []
    tgt_chunk: list[str] = []
    first = 1
    for number, (src, tgt) in enumerate(itertools.zip_longest(_lines(sources), _lines(targets)), start=1):
        if src is None or tgt is None:
            shorter = src_path if src is None else tgt_path
            raise UserError(f"{shorter} ends at line {number - 1}, before the other input: score needs one target line per source line")
        src_chunk.append(src)
        tgt_chunk.append(tgt)
        if len(src_chunk) == chunk_lines:
            yield first, src_chunk, tgt_chunk
            first, src_chunk, tgt_chunk = number + 1, [], []
    if src_chunk:
        yield first, src_chunk, tgt_chunk


def _lines(stream: BinaryIO) -> Iterator[str]:
    for _, lines in read_chunks(stream):
        yield from lines
