"""Reading parallel corpora: every source kind, its error messages, and invalid-UTF-8 counting."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from lstmmt.corpus import MissingSplit, Source, dataset_source, file_source, iter_pairs, local_files
from lstmmt.errors import UserError

SRC = ["the cat sat", "a dog ran", "hello world"]
TGT = ["die katze sass", "ein hund lief", "hallo welt"]


def write(path: Path, data: bytes) -> Path:
    """Write bytes, gzip-compressed when the name ends in .gz."""
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def lines(texts: list[str]) -> bytes:
    return "".join(t + "\n" for t in texts).encode()


def read_pairs(source: Source, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str], dict[str, int]]:
    """All pairs of a small source through iter_pairs, as preprocess reads them: the source lines,
    the target lines and counts {"read": pairs, "invalid_utf8": pairs with bad bytes}."""
    pairs = list(iter_pairs(source, src_lang, tgt_lang))
    counts = {"read": len(pairs), "invalid_utf8": sum(bad for _, _, bad in pairs)}
    return [src for src, _, _ in pairs], [tgt for _, tgt, _ in pairs], counts


@pytest.fixture
def datasets():
    module = pytest.importorskip("datasets")  # absent on the GPU machine
    module.disable_progress_bars()
    return module


@pytest.mark.parametrize(
    ("path", "kind"),
    [("c.tsv", "tsv"), ("c.TSV.gz", "tsv"), ("c.jsonl", "jsonl"), ("c.jsonl.gz", "jsonl"), ("data/train", "prefix")],
)
def test_file_source_infers_kind_from_name(path: str, kind: str) -> None:
    assert file_source(path) == Source(kind, path)


@pytest.mark.parametrize(("src_suffix", "tgt_suffix"), [("", ""), (".gz", ".gz"), ("", ".gz")])
def test_prefix_reads_plain_and_gzip_sides(tmp_path: Path, src_suffix: str, tgt_suffix: str) -> None:
    write(tmp_path / f"train.en{src_suffix}", lines(SRC))
    write(tmp_path / f"train.de{tgt_suffix}", lines(TGT))
    src, tgt, counts = read_pairs(file_source(str(tmp_path / "train")), "en", "de")
    assert (src, tgt) == (SRC, TGT)
    assert counts == {"read": 3, "invalid_utf8": 0}


def test_prefix_lines_are_stripped_single_lines(tmp_path: Path) -> None:
    # BOM, CRLF, padding spaces and a U+2028 (which str.splitlines would split on) all disappear.
    write(tmp_path / "c.en", "\ufeff a b \r\nc\u2028d\r\n".encode())
    write(tmp_path / "c.de", b"x\ny\n")
    src, tgt, _ = read_pairs(file_source(str(tmp_path / "c")), "en", "de")
    assert src == ["a b", "c d"]
    assert tgt == ["x", "y"]


def test_prefix_missing_file_names_the_paths_tried(tmp_path: Path) -> None:
    write(tmp_path / "train.en", lines(SRC))
    with pytest.raises(UserError) as error:
        read_pairs(file_source(str(tmp_path / "train")), "en", "de")
    assert str(tmp_path / "train.de") in str(error.value)
    assert str(tmp_path / "train.de.gz") in str(error.value)


def test_prefix_given_as_a_language_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "train.en", lines(SRC))
    with pytest.raises(UserError, match="without the language suffix"):
        read_pairs(file_source(str(path)), "en", "de")


def test_prefix_sides_of_different_length_name_both_files_and_counts(tmp_path: Path) -> None:
    write(tmp_path / "train.en", lines(SRC))
    write(tmp_path / "train.de.gz", lines(TGT[:2]))
    with pytest.raises(UserError) as error:
        read_pairs(file_source(str(tmp_path / "train")), "en", "de")
    message = str(error.value)
    assert f"{tmp_path / 'train.en'} has 3 lines" in message
    assert f"{tmp_path / 'train.de.gz'} has 2" in message


def test_invalid_utf8_is_replaced_and_counted_per_pair(tmp_path: Path) -> None:
    write(tmp_path / "c.en", b"caf\xe9 ok\ngood\nbad \xff\n")
    write(tmp_path / "c.de", b"kaffee\ngut\n\xfe schlecht\n")
    src, tgt, counts = read_pairs(file_source(str(tmp_path / "c")), "en", "de")
    assert src == ["caf\ufffd ok", "good", "bad \ufffd"]
    assert tgt[2] == "\ufffd schlecht"
    assert counts == {"read": 3, "invalid_utf8": 2}


def test_corrupt_gzip_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "c.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="not a readable gzip file"):
        read_pairs(file_source(str(tmp_path / "c.tsv.gz")), "en", "de")


@pytest.mark.parametrize("name", ["c.tsv", "c.tsv.gz"])
def test_tsv_reads_two_columns_and_keeps_empty_sides(tmp_path: Path, name: str) -> None:
    write(tmp_path / name, b"the cat\tdie katze\r\n\tnur ziel\nhi \t hallo\n")
    src, tgt, counts = read_pairs(file_source(str(tmp_path / name)), "en", "de")
    assert src == ["the cat", "", "hi"]
    assert tgt == ["die katze", "nur ziel", "hallo"]
    assert counts["read"] == 3


def test_tsv_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv", b"a\tb\nc\td\ne\tf\tg\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:3: expected 2 tab-separated columns")) as error:
        read_pairs(file_source(str(path)), "en", "de")
    assert "found 3" in str(error.value)


def test_jsonl_reads_flat_and_translation_layouts(tmp_path: Path) -> None:
    records = [{"en": "the cat", "de": "die katze", "id": 1}, {"translation": {"en": " a dog", "de": "ein hund "}}]
    text = json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n"
    path = write(tmp_path / "c.jsonl.gz", text.encode())
    src, tgt, counts = read_pairs(file_source(str(path)), "en", "de")
    assert (src, tgt) == (["the cat", "a dog"], ["die katze", "ein hund"])
    assert counts == {"read": 2, "invalid_utf8": 0}


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"en": "a", "fr": "b"}', "found keys 'en', 'fr'"),
        ('["en", "de"]', "found a JSON list"),
        ('{"en": "a", "de": 3}', "must be strings"),
    ],
)
def test_jsonl_bad_line_names_its_line_number(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write(tmp_path / "c.jsonl", f'{{"en": "a", "de": "b"}}\n{bad_line}\n'.encode())
    with pytest.raises(UserError, match=re.escape(f"{path}:2: ")) as error:
        read_pairs(file_source(str(path)), "en", "de")
    assert expected in str(error.value)


def test_jsonl_lone_surrogates_count_as_invalid(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", b'{"en": "ok", "de": "gut"}\n{"en": "bad \\ud800", "de": "x"}\n')
    src, _, counts = read_pairs(file_source(str(path)), "en", "de")
    assert src == ["ok", "bad \ufffd"]
    assert counts["invalid_utf8"] == 1


def test_missing_tsv_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        read_pairs(file_source(str(tmp_path / "nope.tsv")), "en", "de")


def test_dataset_dict_with_translation_column(tmp_path: Path, datasets) -> None:
    pairs = [{"en": s, "de": t} for s, t in zip(SRC, TGT)]
    splits = {"train": pairs, "validation": pairs[:1]}
    tables = {name: datasets.Dataset.from_dict({"translation": rows}) for name, rows in splits.items()}
    datasets.DatasetDict(tables).save_to_disk(str(tmp_path / "ds"))
    src, tgt, counts = read_pairs(dataset_source(str(tmp_path / "ds"), None, "train"), "en", "de")
    assert (src, tgt, counts) == (SRC, TGT, {"read": 3, "invalid_utf8": 0})
    src, tgt, _ = read_pairs(dataset_source(str(tmp_path / "ds"), None, "validation"), "en", "de")
    assert (src, tgt) == (SRC[:1], TGT[:1])


def test_dataset_with_flat_columns_and_missing_values(tmp_path: Path, datasets) -> None:
    table = datasets.Dataset.from_dict({"en": ["a b ", None], "de": ["c d", "e"], "score": [1.0, 0.5]})
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "ds"))
    src, tgt, _ = read_pairs(dataset_source(str(tmp_path / "ds"), None, "train"), "en", "de")
    assert (src, tgt) == (["a b", ""], ["c d", "e"])


def test_dataset_missing_split_names_the_available_ones(tmp_path: Path, datasets) -> None:
    table = datasets.Dataset.from_dict({"en": ["a"], "de": ["b"]})
    datasets.DatasetDict({"train": table, "dev": table}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(MissingSplit, match="no split 'test'; available: train, dev"):
        read_pairs(dataset_source(str(tmp_path / "ds"), None, "test", required=False), "en", "de")


def test_single_saved_dataset_serves_only_as_train(tmp_path: Path, datasets) -> None:
    datasets.Dataset.from_dict({"en": ["a"], "de": ["b"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_pairs(dataset_source(str(tmp_path / "ds"), None, "train"), "en", "de")[:2] == (["a"], ["b"])
    with pytest.raises(MissingSplit, match="available: train"):
        read_pairs(dataset_source(str(tmp_path / "ds"), None, "validation"), "en", "de")


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"source": ["a"], "target": ["b"]}, "has columns source, target"),
        ({"translation": [{"fr": "a", "es": "b"}]}, "has translations in fr, es"),
    ],
)
def test_dataset_with_unknown_layout_lists_what_it_found(
    tmp_path: Path, datasets, columns: dict, expected: str
) -> None:
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError, match=expected):
        read_pairs(dataset_source(str(tmp_path / "ds"), None, "train"), "en", "de")


def test_dataset_data_file_is_loaded_as_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep ~/.cache clean
    datasets.Dataset.from_dict({"en": SRC, "de": TGT}).to_parquet(str(tmp_path / "c.parquet"))
    src, tgt, _ = read_pairs(dataset_source(str(tmp_path / "c.parquet"), None, "train"), "en", "de")
    assert (src, tgt) == (SRC, TGT)


def test_streamed_dataset_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    rows = [{"translation": {"en": s, "de": t}} for s, t in zip(SRC, TGT)] * 700  # several batches of 1000
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    src, tgt, counts = read_pairs(dataset_source(str(tmp_path / "c.jsonl"), None, "train", streaming=True), "en", "de")
    assert (src, tgt, counts["read"]) == (SRC * 700, TGT * 700, 2100)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.arrow"))  # nothing converted


def test_dataset_load_failure_says_what_was_tried(monkeypatch: pytest.MonkeyPatch, datasets) -> None:
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError) as error:
        read_pairs(dataset_source("someone/wmt-xx", "de-en", "train"), "en", "de")
    message = str(error.value)
    assert "'someone/wmt-xx' (config de-en) via the Hugging Face hub: Couldn't reach the hub" in message
    assert "save_to_disk" in message


def test_local_files_resolves_prefix_sides(tmp_path: Path) -> None:
    write(tmp_path / "c.en", b"a\n")
    write(tmp_path / "c.de.gz", b"b\n")
    assert local_files(file_source(str(tmp_path / "c")), "en", "de") == [tmp_path / "c.en", tmp_path / "c.de.gz"]
