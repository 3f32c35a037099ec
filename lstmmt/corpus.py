"""Reading parallel text: line-aligned file pairs (plain or gzip), TSV, JSONL and `datasets` sources.

Every reader yields the same thing, one (source, target, had invalid bytes) triple per pair,
so cleaning and filtering in preprocess.py never care where the text came from, and a
corpus larger than memory streams through: nothing here holds more than one pair (or one
`datasets` batch) at a time. Files are read as bytes and
decoded with errors="replace": one bad byte must not abort a large corpus, but the pairs it
damaged are counted so preprocess can drop them from training. Each returned line is stripped
and free of line breaks, so one sentence stays one line in every file written from it.
"""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from lstmmt.errors import UserError

Pair = tuple[str, str, bool]
"""Source line, target line, and whether invalid UTF-8 was replaced in either."""

# Everything str.splitlines() splits on: kept out of sentences so any reader sees one line per pair.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_SURROGATES = re.compile("[\ud800-\udfff]")

# `datasets` builders for single data files given as a dataset source.
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


@dataclass(frozen=True)
class Source:
    """Where one split of a parallel corpus comes from."""

    kind: Literal["prefix", "tsv", "jsonl", "dataset"]
    path: str
    """PREFIX (reads PREFIX.<src_lang> and PREFIX.<tgt_lang>, each plain or .gz), a .tsv/.jsonl
    file (optionally .gz), or a datasets hub name / save_to_disk folder / data file."""
    dataset_config: str | None = None
    split: str | None = None
    """The datasets split name (kind == "dataset"); None means "train"."""
    required: bool = True
    """False: a dataset split that may be absent (reading still raises MissingSplit; preprocess skips it)."""
    streaming: bool = False
    """Stream a hub dataset or data file with `datasets` instead of downloading and converting it whole."""


class MissingSplit(UserError):
    """A requested `datasets` split does not exist; the message names the splits that do."""


def file_source(path: str) -> Source:
    """A file source whose kind follows from the name: *.tsv[.gz], *.jsonl[.gz], else a PREFIX."""
    name = path.lower()
    for kind in ("tsv", "jsonl"):
        if name.endswith((f".{kind}", f".{kind}.gz")):
            return Source(kind, path)
    return Source("prefix", path)


def dataset_source(name: str, config: str | None, split: str, required: bool = True, streaming: bool = False) -> Source:
    """A Hugging Face `datasets` source: hub name, save_to_disk folder or data file."""
    return Source("dataset", name, config, split, required, streaming)


def iter_pairs(source: Source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    """The pairs of a source, one at a time, each side one stripped line."""
    readers = {"prefix": _iter_prefix, "tsv": _iter_tsv, "jsonl": _iter_jsonl, "dataset": _iter_dataset}
    return readers[source.kind](source, src_lang, tgt_lang)


def local_files(source: Source, src_lang: str, tgt_lang: str) -> list[Path]:
    """The local files a source reads (to record their hashes); empty for a hub dataset."""
    if source.kind == "prefix":
        return [_side_file(source.path, lang) for lang in (src_lang, tgt_lang)]
    path = Path(source.path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def _iter_prefix(source: Source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    src_path, tgt_path = (_side_file(source.path, lang) for lang in (src_lang, tgt_lang))
    src_lines, tgt_lines = _lines(src_path), _lines(tgt_path)
    for count, (raw_src, raw_tgt) in enumerate(itertools.zip_longest(src_lines, tgt_lines)):
        if raw_src is None or raw_tgt is None:  # one side ended first: count the rest of the other
            src_total = count + (raw_src is not None) + sum(1 for _ in src_lines)
            tgt_total = count + (raw_tgt is not None) + sum(1 for _ in tgt_lines)
            raise UserError(
                f"{src_path} has {src_total} lines but {tgt_path} has {tgt_total}: "
                "the two sides must be line-aligned (one sentence per line, in the same order)"
            )
        yield _decoded_pair(raw_src, raw_tgt)


def _side_file(prefix: str, lang: str) -> Path:
    """PREFIX.lang, or PREFIX.lang.gz when only the compressed file exists."""
    tried = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
    for path in tried:
        if path.is_file():
            return path
    hint = ""
    if Path(prefix).is_file():
        hint = f" ({prefix} itself is a file: give the prefix without the language suffix, or a .tsv/.jsonl file)"
    raise UserError(f"no {lang} side for corpus prefix {prefix}: tried {tried[0]} and {tried[1]}{hint}")


def _iter_tsv(source: Source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    path = Path(source.path)
    for number, line in enumerate(_lines(path), 1):
        columns = line.split(b"\t")
        if len(columns) != 2:
            raise UserError(
                f"{path}:{number}: expected 2 tab-separated columns ({src_lang}<TAB>{tgt_lang}), found {len(columns)}"
            )
        yield _decoded_pair(columns[0], columns[1])


def _iter_jsonl(source: Source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    path = Path(source.path)
    for number, raw in enumerate(_lines(path), 1):
        text, bad_bytes = _decode(raw)
        if not text.strip():
            continue  # a blank line in JSONL is formatting, not a pair
        pair = _jsonl_pair(text, src_lang, tgt_lang, f"{path}:{number}")
        clean = tuple(without_surrogates(value) for value in pair)
        yield one_line(clean[0]), one_line(clean[1]), bad_bytes or clean != pair


def _jsonl_pair(text: str, src_lang: str, tgt_lang: str, where: str) -> tuple[str, str]:
    """The two sides of one JSONL record: {src: .., tgt: ..} or {"translation": {src: .., tgt: ..}}."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
    if isinstance(record, dict) and isinstance(record.get("translation"), dict):
        record = record["translation"]
    if not (isinstance(record, dict) and src_lang in record and tgt_lang in record):
        if isinstance(record, dict):
            found = f"keys {', '.join(map(repr, record))}"
        else:
            found = f"a JSON {type(record).__name__}"
        raise UserError(
            f"{where}: expected an object with keys {src_lang!r} and {tgt_lang!r} (or a 'translation' object "
            f"holding them), found {found}; set data.src_lang/data.tgt_lang to the keys the file uses"
        )
    pair = record[src_lang], record[tgt_lang]
    if not all(isinstance(value, str) for value in pair):
        raise UserError(f"{where}: the values of {src_lang!r} and {tgt_lang!r} must be strings")
    return pair


def _iter_dataset(source: Source, src_lang: str, tgt_lang: str) -> Iterator[Pair]:
    """Rows of a `datasets` split, read a batch at a time (a streamed split has no length or columns up front)."""
    for batch in _load_split(source).iter(batch_size=1000):
        if "translation" in batch:
            rows = batch["translation"]
            _check_languages(rows[0] if rows else {}, src_lang, tgt_lang, source.path)
            pairs: Iterable[tuple[Any, Any]] = ((row[src_lang], row[tgt_lang]) for row in rows)
        elif src_lang in batch and tgt_lang in batch:
            pairs = zip(batch[src_lang], batch[tgt_lang])
        else:
            raise UserError(
                f"dataset {source.path} has columns {', '.join(batch)}: expected a 'translation' column or "
                f"columns {src_lang!r} and {tgt_lang!r}; set data.src_lang/data.tgt_lang to match"
            )
        for src, tgt in pairs:
            yield _text(src), _text(tgt), False


def _load_split(source: Source) -> Any:
    """One split of a dataset (`datasets.Dataset`, or IterableDataset when streaming); MissingSplit
    names the splits there are."""
    splits = _load_splits(source)
    wanted = source.split or "train"
    if wanted not in splits:
        raise MissingSplit(f"dataset {source.path} has no split {wanted!r}; available: {', '.join(splits)}")
    return splits[wanted]


def _load_splits(source: Source) -> Any:
    """All splits of a dataset source, as a mapping from split name to a `datasets` split.

    A single saved Dataset or data file has no split names of its own; it serves as "train"
    (or the split it was saved from), so it is never read again as valid or test data.
    """
    import datasets  # lazily: the GPU machine lacks it, and file sources never need it

    path = Path(source.path)
    advice = ""
    if _is_saved_dataset(path):
        if source.dataset_config:
            raise UserError(f"{path} is a saved dataset folder, which has no configs: drop the dataset config")
        load, how = partial(datasets.load_from_disk, str(path)), "datasets.load_from_disk"
    elif path.is_file():
        builder = _data_file_builder(path)
        load = partial(datasets.load_dataset, builder, data_files=str(path), streaming=source.streaming)
        how = f"the {builder} loader"
    else:
        load = partial(datasets.load_dataset, source.path, source.dataset_config, streaming=source.streaming)
        how = "the Hugging Face hub"
        advice = (
            "; check the name and config, the network (HF_DATASETS_OFFLINE=1 reads the local cache), "
            "or give a local folder written by save_to_disk"
        )
    try:
        loaded = load()
    except Exception as exc:  # noqa: BLE001 (datasets raises many types: network, config, damaged files)
        config = f" (config {source.dataset_config})" if source.dataset_config else ""
        raise UserError(f"could not load dataset {source.path!r}{config} via {how}: {exc}{advice}") from None
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        return {str(loaded.split or "train"): loaded}
    return loaded


def _is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _data_file_builder(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if not suffixes or suffixes[-1] not in _DATA_FILE_BUILDERS:
        raise UserError(f"cannot load {path} with `datasets`: data files must end in {', '.join(_DATA_FILE_BUILDERS)}")
    return _DATA_FILE_BUILDERS[suffixes[-1]]


def _check_languages(row: dict[str, Any], src_lang: str, tgt_lang: str, name: str) -> None:
    if row and not (src_lang in row and tgt_lang in row):
        raise UserError(
            f"dataset {name} has translations in {', '.join(row)}, not {src_lang!r} and {tgt_lang!r}; "
            "set data.src_lang/data.tgt_lang to match"
        )


def _text(value: Any) -> str:
    """A dataset cell as one clean line; a missing value (None) becomes empty and is dropped later."""
    return "" if value is None else one_line(str(value))


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a plain or gzip file, one at a time, without terminators or a UTF-8 byte-order mark.

    Split on b"\\n" only, so both sides of a pair agree on where lines end.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle):
                if number == 0 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8) :]
                yield line.rstrip(b"\r\n")
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; expected a corpus file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is not a readable gzip file ({exc}); re-create or decompress it") from None


def _decoded_pair(raw_src: bytes, raw_tgt: bytes) -> Pair:
    (src_text, src_bad), (tgt_text, tgt_bad) = _decode(raw_src), _decode(raw_tgt)
    return one_line(src_text), one_line(tgt_text), src_bad or tgt_bad


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text, with U+FFFD for invalid bytes, and whether there were any."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD. JSON escapes ("\\ud800") can smuggle
    them into a str, and neither a UTF-8 writer nor SentencePiece accepts them."""
    return _SURROGATES.sub("\ufffd", text)


def one_line(text: str) -> str:
    """Text stripped, with every character str.splitlines() splits on turned into a space.

    Any reader that splits on one of them would see one line as several, so neither
    corpus text nor translate's input and output may hold them.
    """
    return _LINE_BREAKS.sub(" ", text).strip()
