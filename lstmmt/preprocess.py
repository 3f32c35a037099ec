"""The preprocess step: read, clean, train the tokenizer, encode, filter and write a run's data.

The order matters. Text cleaning (empty sides, text broken by invalid UTF-8) comes before
tokenizer training, so garbage does not shape the vocabulary; the length filters come after
encoding, because they count subword tokens. Only training pairs are filtered by length or
encoding damage: valid and test are references and keep every pair with two non-empty sides.
data/meta.json is written last and marks the step complete.

meta.json holds: src_lang, tgt_lang; splits.SPLIT.{read, invalid_utf8, dropped.REASON, kept};
filters; sources.SPLIT.{kind, path, [dataset_config, split,] files[{path, sha256}]};
tokenizer.{joint, model_type, src_vocab_size, tgt_vocab_size}; created; lstmmt_version.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lstmmt import __version__
from lstmmt.config import Config, DataConfig
from lstmmt.corpus import MissingSplit, Pairs, Source, local_files, read_pairs
from lstmmt.encoded import pack, write_packed
from lstmmt.errors import UserError
from lstmmt.rundir import SIDES, RunDir, atomic_write_text
from lstmmt.tokenizer import Tokenizer, model_files, train_tokenizer

SPLITS = ("train", "valid", "test")
REFERENCE_SPLITS = ("valid", "test")
DROP_REASONS = {"train": ("empty", "invalid_utf8", "too_long", "bad_ratio"), "valid": ("empty",), "test": ("empty",)}
ENCODE_CHUNK = 50_000
"""Pairs encoded at a time: bounds the memory of Python id lists on large corpora."""

console = Console(stderr=True, soft_wrap=True)  # stdout stays clean for pipes; long paths stay on one line

T = TypeVar("T")
Problem = Callable[[Any, Any], str | None]
"""Names why a pair (of texts or of id lists) must go, or returns None to keep it."""


def preprocess(run: RunDir, config: Config, sources: dict[str, Source], force: bool = False) -> dict:
    """Build RUN/config.yaml, RUN/tokenizer/ and RUN/data/ from the given splits; return the meta dict."""
    _check_split_names(sources)
    _clear_previous(run, force)
    texts, stats = _read_and_clean(sources, config.data)
    console.print(f"training the tokenizer on {len(texts['train'][0])} pairs")
    train_tokenizer(*texts["train"], config.tokenizer, run.tokenizer_dir)
    tokenizer = Tokenizer.load(run.tokenizer_dir)
    console.print(f"encoding {', '.join(texts)}")
    length_problem = partial(_length_problem, data=config.data)
    encoded = {
        split: _encode(tokenizer, src, tgt, length_problem if split == "train" else None, stats[split]["dropped"])
        for split, (src, tgt) in texts.items()
    }
    if len(encoded["train"]["src"][1]) == 0:
        raise UserError(
            f"the length filters dropped every training pair (data.max_tokens={config.data.max_tokens}, "
            f"data.max_ratio={config.data.max_ratio}): raise them, e.g. --set data.max_tokens=N"
        )
    config.save(run.config)
    for split, sides in encoded.items():
        for side, (ids, lengths) in sides.items():
            write_packed(run, split, side, ids, lengths)
        stats[split]["kept"] = len(sides["src"][1])
        if split in REFERENCE_SPLITS:
            _write_text(run, split, *texts[split])
    meta = _meta(config, sources, stats, tokenizer)
    atomic_write_text(run.meta, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    _show_summary(run, stats)
    return meta


def _check_split_names(sources: dict[str, Source]) -> None:
    unknown = sorted(set(sources) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown split name(s) {', '.join(unknown)}: use train, valid and test")
    if "train" not in sources:
        raise UserError("preprocess needs a train source: the tokenizer and the model learn from it")


def _clear_previous(run: RunDir, force: bool) -> None:
    """Refuse to redo a finished step without --force, then remove what this step writes.

    Only this step's own files are removed, never whole folders: a run directory may sit
    beside the user's files, and leftovers of an interrupted run must not mix with new output.
    """
    if run.config.exists() and run.meta.exists() and not force:
        raise UserError(
            f"{run.root} is already preprocessed (see {run.meta}): pass --force to redo it, "
            "which replaces its tokenizer and encoded data"
        )
    if any(run.checkpoints.glob("*.pt")):
        old_models = escape(str(run.checkpoints))
        console.print(f"[yellow]warning:[/] {old_models} holds models trained on the old data and tokenizer")
    run.meta.unlink(missing_ok=True)  # first, so a crash from here on leaves the run visibly unfinished
    outputs = [path(split, side) for path in (run.ids, run.offsets, run.text) for split in SPLITS for side in SIDES]
    for path in outputs + model_files(run.tokenizer_dir):
        path.unlink(missing_ok=True)


def _read_and_clean(
    sources: dict[str, Source], data: DataConfig
) -> tuple[dict[str, tuple[list[str], list[str]]], dict[str, dict]]:
    """The cleaned text pairs of each split that exists, and its counts so far."""
    texts, stats = {}, {}
    for split in (s for s in SPLITS if s in sources):
        read = _read_split(split, sources[split], data)
        if read is None:
            continue
        src, tgt, counts = read
        dropped = dict.fromkeys(DROP_REASONS[split], 0)
        texts[split] = _drop_pairs(src, tgt, _train_text_problem if split == "train" else _empty_side, dropped)
        stats[split] = {**counts, "dropped": dropped}
        if not texts[split][0]:
            raise UserError(
                f"{sources[split].path} has no usable {split} pairs ({counts['read']} read, "
                f"dropped {_listed(dropped)}): check the format and data.src_lang/data.tgt_lang"
            )
    return texts, stats


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in counts.items())


def _read_split(split: str, source: Source, data: DataConfig) -> Pairs | None:
    """The split's pairs, or None (with a warning) when an optional dataset split does not exist."""
    console.print(f"reading {split} from {escape(source.path)}")
    try:
        return read_pairs(source, data.src_lang, data.tgt_lang)
    except MissingSplit as missing:
        if source.required or split == "train":
            raise
        console.print(f"[yellow]warning:[/] {escape(str(missing))}; continuing without a {split} split")
        return None


def _drop_pairs(src: list[T], tgt: list[T], problem: Problem, dropped: dict[str, int]) -> tuple[list[T], list[T]]:
    """The pairs in which `problem` finds nothing; each other pair is counted under the problem it has."""
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        reason = problem(s, t)
        if reason:
            dropped[reason] += 1
        else:
            kept_src.append(s)
            kept_tgt.append(t)
    return kept_src, kept_tgt


def _empty_side(src: str, tgt: str) -> str | None:
    return "empty" if not src or not tgt else None


def _train_text_problem(src: str, tgt: str) -> str | None:
    """Empty sides, and U+FFFD: the mark of text damaged by invalid UTF-8 (here or upstream)."""
    return _empty_side(src, tgt) or ("invalid_utf8" if "\ufffd" in src or "\ufffd" in tgt else None)


def _length_problem(src: Sequence[int], tgt: Sequence[int], data: DataConfig) -> str | None:
    """Very long pairs cost memory and rarely help; very uneven ones are usually misaligned."""
    longer, shorter = max(len(src), len(tgt)), min(len(src), len(tgt))
    if longer > data.max_tokens:
        return "too_long"
    if longer / max(1, shorter) > data.max_ratio:
        return "bad_ratio"
    return None


def _encode(
    tokenizer: Tokenizer, src: list[str], tgt: list[str], problem: Problem | None, dropped: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each side's packed (ids, lengths), encoded chunk by chunk, without the pairs `problem` objects to."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {side: [] for side in SIDES}
    for start in range(0, len(src), ENCODE_CHUNK):
        src_ids = tokenizer.encode_src(src[start : start + ENCODE_CHUNK])
        tgt_ids = tokenizer.encode_tgt(tgt[start : start + ENCODE_CHUNK])
        if problem is not None:
            src_ids, tgt_ids = _drop_pairs(src_ids, tgt_ids, problem, dropped)
        parts["src"].append(pack(src_ids))
        parts["tgt"].append(pack(tgt_ids))
    # zip(*chunks) regroups [(ids, lengths), ...] into (all ids arrays, all lengths arrays).
    return {side: tuple(np.concatenate(arrays) for arrays in zip(*chunks)) for side, chunks in parts.items()}


def _write_text(run: RunDir, split: str, src: list[str], tgt: list[str]) -> None:
    """The cleaned text of a reference split: BLEU references and the input of `evaluate --split`."""
    for side, lines in zip(SIDES, (src, tgt)):
        atomic_write_text(run.text(split, side), "".join(line + "\n" for line in lines))


def _meta(config: Config, sources: dict[str, Source], stats: dict[str, dict], tokenizer: Tokenizer) -> dict:
    data = config.data
    return {
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "splits": stats,
        "filters": {"max_tokens": data.max_tokens, "max_ratio": data.max_ratio, "applied_to": ["train"]},
        "sources": {split: _describe(sources[split], data) for split in stats},
        "tokenizer": {
            "joint": tokenizer.joint,
            "model_type": config.tokenizer.model_type,
            "src_vocab_size": tokenizer.src_vocab_size,
            "tgt_vocab_size": tokenizer.tgt_vocab_size,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lstmmt_version": __version__,
    }


def _describe(source: Source, data: DataConfig) -> dict:
    """Where a split came from, with a hash of each local file so a changed input is noticed."""
    entry: dict = {"kind": source.kind, "path": source.path}
    if source.kind == "dataset":
        entry.update(dataset_config=source.dataset_config, split=source.split)
    files = local_files(source, data.src_lang, data.tgt_lang)
    entry["files"] = [{"path": str(path), "sha256": _sha256(path)} for path in files]
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _show_summary(run: RunDir, stats: dict[str, dict]) -> None:
    reasons = DROP_REASONS["train"]
    table = Table(
        title=f"preprocessed {escape(str(run.root))}",
        caption="pairs dropped, by reason; valid and test are only cleaned of empty sides",
    )
    for column in ("split", "read", *(reason.replace("_", " ") for reason in reasons), "kept"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in stats.items():
        dropped = [str(counts["dropped"].get(reason, "-")) for reason in reasons]
        table.add_row(split, str(counts["read"]), *dropped, str(counts["kept"]))
    console.print(table)
