"""The translate step: text in, text out, exactly one output line per input line, in order.

Input is read in chunks (bounded memory on big files and pipes; small at first, so output
starts soon), each chunk sorted by length into token-budget batches for search, and
written back in input order.

Lines end at "\n" only (CRLF works). The other characters str.splitlines() breaks on
(\r \v \f \x1c-\x1e \x85 \u2028 \u2029) become spaces inside an input line, as preprocess
does to the training text, and never appear inside an output line. A line with nothing to
translate (empty, whitespace, or only characters the tokenizer drops) gives an empty line;
invalid UTF-8 is replaced by U+FFFD with a warning naming the line; over-long lines are
truncated to the model's maximum source length with a warning naming the line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, TextIO

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lstmmt import checkpoint
from lstmmt.batching import collate, token_batches
from lstmmt.config import DecodeConfig
from lstmmt.corpus import one_line
from lstmmt.device import autocast, choose_precision, resolve_device
from lstmmt.errors import UserError
from lstmmt.model import Seq2Seq
from lstmmt.search import Hypothesis, beam_search, greedy_search
from lstmmt.rundir import RunDir, atomic_write
from lstmmt.tokenizer import Tokenizer

stderr = Console(stderr=True)

@dataclass
class SearchOptions:
    beam_size: int
    n_best: int
    length_penalty: float
    max_len_a: float
    max_len_b: int
    batch_tokens: int
    precision: str = "fp32"

    @classmethod
    def from_config(cls, config: DecodeConfig, beam_size: Optional[int] = None, n_best: int = 1) -> "SearchOptions":
        return cls(beam_size or config.beam_size, n_best, config.length_penalty, config.max_len_a, config.max_len_b,
                   config.batch_tokens, config.precision)


def for_search(model: Seq2Seq, device: torch.device, precision: str) -> Seq2Seq:
    """The model on `device` in eval mode. For bf16 search on CPU its weights become bf16
    once, where autocast alone casts each weight again at every decoder step (a fifth of
    beam-search time); on GPUs autocast keeps the LSTM on its usual cuDNN path."""
    model = model.to(device).eval()
    return model.to(torch.bfloat16) if precision == "bf16" and device.type == "cpu" else model


def decode_corpus(model: Seq2Seq, sentences: Sequence[np.ndarray], options: SearchOptions, device: torch.device) -> list[list[Hypothesis]]:
    """Search every sentence (source ids without EOS); results in input order.

    Sorting by length keeps padding low; the batch budget counts source tokens x beams.
    Each sentence's result does not depend on the batch it lands in.
    """
    model.eval()
    lengths = np.array([len(s) + 1 for s in sentences], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    budget = max(1, options.batch_tokens // options.beam_size)
    results: list[list[Hypothesis]] = [[] for _ in sentences]
    for indices in token_batches(order, lengths, budget):
        batch = collate(indices, sentences).to(device)
        with autocast(device, options.precision):
            hyps_of_batch = _search(model, batch.src, batch.src_lengths, options)
        for index, hyps in zip(indices, hyps_of_batch):
            results[index] = hyps
    return results


def _search(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions) -> list[list[Hypothesis]]:
    if options.beam_size == 1:
        return [[Hypothesis(tokens, 0.0, 0.0)] for tokens in greedy_search(model, src, src_lengths, options.max_len_a, options.max_len_b)]
    return beam_search(model, src, src_lengths, options.beam_size, options.length_penalty, options.max_len_a, options.max_len_b, options.n_best)


def translate_lines(
    model: Seq2Seq, tokenizer: Tokenizer, lines: list[str], options: SearchOptions, device: torch.device,
    max_source_tokens: int, first_line: int = 1,
) -> list[list[Hypothesis]]:
    """Translate stripped lines. Warns on truncation.

    A line without source tokens yields no hypotheses: besides empty lines, that is a line of
    characters the tokenizer's normaliser drops (U+FFFD, zero-width space, BOM), which would
    otherwise be "translated" from nothing into whatever the decoder makes up.
    """
    encoded = tokenizer.encode_src(lines)
    for offset, ids in enumerate(encoded):
        if len(ids) > max_source_tokens:
            stderr.print(f"[yellow]warning:[/] line {first_line + offset}: {len(ids)} tokens, truncated to {max_source_tokens}")
    keep = [i for i, ids in enumerate(encoded) if ids]
    sentences = [np.asarray(encoded[i][:max_source_tokens], dtype=np.int32) for i in keep]
    results: list[list[Hypothesis]] = [[] for _ in lines]
    for i, hyps in zip(keep, decode_corpus(model, sentences, options, device)):
        results[i] = hyps
    return results


def read_chunks(stream: BinaryIO, chunk_lines: int, first_chunk: int = 64) -> Iterator[tuple[int, list[str]]]:
    """(first line number, stripped lines) in chunks; invalid UTF-8 becomes U+FFFD with a warning.

    Chunks start at `first_chunk` lines and double up to `chunk_lines`: the first output
    comes quickly, and later chunks are large enough to sort into well-filled batches.
    Iterating a binary stream splits on b"\n" only, so "\r\n" files count their lines right
    and a stray form feed or U+2028 inside a line cannot split it (it becomes a space).
    """
    chunk: list[str] = []
    first, size = 1, min(first_chunk, chunk_lines)
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            stderr.print(f"[yellow]warning:[/] line {number}: invalid UTF-8 replaced by U+FFFD")
        chunk.append(one_line(line))
        if len(chunk) == size:
            yield first, chunk
            first, chunk, size = number + 1, [], min(2 * size, chunk_lines)
    if chunk:
        yield first, chunk


def format_output(hyps: list[Hypothesis], tokenizer: Tokenizer, n_best: int, line_index: int) -> list[str]:
    """The output lines for one input line: the best translation, or with n_best > 1 one line
    per hypothesis as `index ||| translation ||| score` (Moses n-best style).

    A line with nothing to translate (no hypotheses) still gets its row: an empty line, or
    `index |||  ||| 0.0000` in n-best mode, so every input index appears in the output.
    Line breaks in decoded text become spaces: pieces of a tokenizer trained elsewhere
    could hold them, and one would split an output line in two.
    """
    if not hyps:
        return [""] if n_best == 1 else [f"{line_index} |||  ||| 0.0000"]
    texts = [one_line(text) for text in tokenizer.decode_tgt([h.tokens for h in hyps])]
    if n_best == 1:
        return [texts[0]]
    return [f"{line_index} ||| {text} ||| {hyp.score:.4f}" for text, hyp in zip(texts, hyps)]


def translate_stream(
    model: Seq2Seq, tokenizer: Tokenizer, source: BinaryIO, target: TextIO, options: SearchOptions,
    device: torch.device, max_source_tokens: int, chunk_lines: int = 5000, progress: Optional[Callable[[int], None]] = None,
) -> int:
    """Translate `source` to `target` chunk by chunk; returns the number of input lines."""
    total = 0
    for first, lines in read_chunks(source, chunk_lines):
        results = translate_lines(model, tokenizer, lines, options, device, max_source_tokens, first)
        for offset, hyps in enumerate(results):
            target.write("\n".join(format_output(hyps, tokenizer, options.n_best, first - 1 + offset)) + "\n")
        target.flush()
        total += len(lines)
        if progress is not None:
            progress(len(lines))
    return total


def open_input(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def translate_file(
    run: RunDir, input_path: str, output_path: str, checkpoint_name: str = "best", beam_size: Optional[int] = None,
    n_best: int = 1, batch_tokens: Optional[int] = None, device_name: str = "auto", length_penalty: Optional[float] = None,
    precision: Optional[str] = None,
) -> int:
    """The translate step over files or stdin/stdout ('-'); a file output appears only when complete."""
    run.require_checkpoint()
    if input_path != "-" and not Path(input_path).is_file():
        raise UserError(f"input file not found: {input_path}")
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    device = resolve_device(device_name)
    model, config, _ = checkpoint.load_model(checkpoint.resolve(run, checkpoint_name), tokenizer)
    # Command-line choices override the checkpoint's decode settings, checked like --set.
    overrides = {"batch_tokens": batch_tokens or None, "length_penalty": length_penalty, "precision": precision}
    config = config.with_overrides([f"decode.{key}={value}" for key, value in overrides.items() if value is not None])
    precision = choose_precision(config.decode.precision, device, "decode.precision", training=False)
    stderr.print(f"Translating on {device} in {precision}", soft_wrap=True)
    options = replace(SearchOptions.from_config(config.decode, beam_size, n_best), precision=precision.name)
    model = for_search(model, device, options.precision)
    if not 1 <= n_best <= options.beam_size:
        raise UserError(f"--n-best must be between 1 and the beam size ({options.beam_size})")

    def run_on(target: TextIO) -> int:
        with open_input(input_path) as source, Progress(
            SpinnerColumn(), TextColumn("translated {task.completed:,} lines"), TimeElapsedColumn(),
            console=stderr, transient=True, disable=not stderr.is_terminal,
        ) as progress:
            task = progress.add_task("translate", total=None)
            return translate_stream(model, tokenizer, source, target, options, device, config.model.max_source_tokens,
                                    progress=lambda n: progress.advance(task, n))

    if output_path == "-":
        return run_on(sys.stdout)
    counted: list[int] = []

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as target:
            counted.append(run_on(target))

    atomic_write(Path(output_path), write)
    return counted[0]
