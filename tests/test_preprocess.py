"""The encoded corpus format and the preprocess step end to end, on small synthetic corpora."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lstmmt.config import Config, DataConfig
from lstmmt.corpus import MissingSplit, dataset_source, file_source
from lstmmt.encoded import EncodedSide, SideWriter, write_side
from lstmmt.errors import UserError
from lstmmt.preprocess import _length_problem, preprocess
from lstmmt.rundir import RunDir
from lstmmt.tokenizer import Tokenizer

WORDS = "the cat dog sees a house small big runs home river tree bird sings today and green old water".split()


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n pairs whose target is the source in capitals: enough text for a joint vocabulary of 50."""
    rng = random.Random(seed)
    src = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(n)]
    return src, [line.upper() for line in src]


def config(tokenizer: dict | None = None, **data: object) -> Config:
    settings = {"src_lang": "en", "tgt_lang": "de", "max_tokens": 1000, "max_ratio": 3.0, **data}
    return Config.from_dict({"data": settings, "tokenizer": {"vocab_size": 50, **(tokenizer or {})}})


def write_prefix(prefix: Path, src: list[bytes], tgt: list[bytes]) -> str:
    for lang, lines in (("en", src), ("de", tgt)):
        Path(f"{prefix}.{lang}").write_bytes(b"".join(line + b"\n" for line in lines))
    return str(prefix)


def encoded(lines: list[str]) -> list[bytes]:
    return [line.encode() for line in lines]


# --- the encoded corpus format -------------------------------------------------------------------


def test_encoded_side_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    write_side(run, "train", "src", [[5, 6, 7], [], [8]])
    assert np.load(run.offsets("train", "src")).tolist() == [0, 3, 3, 4]
    assert not list(run.data_dir.glob("*.tmp"))
    side = EncodedSide.open(run, "train", "src")
    assert len(side) == 3
    everything = side.all()
    assert everything.lengths.dtype == np.int32 and everything.lengths.tolist() == [3, 0, 1]
    assert [everything[i].tolist() for i in range(3)] == [[5, 6, 7], [], [8]]
    picked = side.select([(2, 3), (0, 2)])  # ranges in the order given
    assert picked.lengths.tolist() == [1, 3, 0] and picked[0].tolist() == [8] and picked[1].tolist() == [5, 6, 7]
    assert side[0].dtype == np.int32 and side[0].tolist() == [5, 6, 7]
    assert side[1].tolist() == [] and side[-1].tolist() == [8]
    assert not isinstance(side[0], np.memmap)  # read from disk on demand, never mapped
    with pytest.raises(IndexError):
        side[3]


def test_side_writer_chunks_equal_one_write(tmp_path: Path) -> None:
    sentences = [[5, 6, 7], [], [8], [9, 10], [11] * 50]
    whole, chunked = RunDir(tmp_path / "whole"), RunDir(tmp_path / "chunked")
    write_side(whole, "train", "src", sentences)
    writer = SideWriter(chunked, "train", "src")
    for start in range(0, len(sentences), 2):
        writer.add(sentences[start : start + 2])
    assert writer.close() == len(sentences)
    for path in ("ids", "offsets"):
        a, b = (np.load(getattr(run, path)("train", "src")) for run in (whole, chunked))
        assert a.dtype == b.dtype and a.tolist() == b.tolist()
    assert sorted(p.name for p in chunked.data_dir.iterdir()) == ["train.src.ids.npy", "train.src.offsets.npy"]


def test_encoded_side_missing_names_preprocess(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no encoded valid data .* run `lstmmt preprocess"):
        EncodedSide.open(RunDir(tmp_path), "valid", "tgt")


def test_encoded_side_with_mismatched_files_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    write_side(run, "train", "src", [[5, 6, 7], [8]])
    np.save(run.ids("train", "src"), np.array([5, 6], dtype=np.int32))
    with pytest.raises(UserError, match="do not match"):
        EncodedSide.open(run, "train", "src")


@pytest.mark.parametrize("which", ["ids", "offsets"])
def test_truncated_encoded_file_is_refused(tmp_path: Path, which: str) -> None:
    run = RunDir(tmp_path)
    write_side(run, "train", "src", [[5, 6, 7], [8]] * 50)
    path = getattr(run, which)("train", "src")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(UserError, match="do not match"):
        EncodedSide.open(run, "train", "src")


# --- cleaning rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src_len", "tgt_len", "problem"),
    [
        (3, 1, None), (4, 1, "bad_ratio"), (1, 4, "bad_ratio"), (0, 3, None), (0, 4, "bad_ratio"),
        (10, 10, None), (11, 11, "too_long"), (11, 1, "too_long"),
    ],  # fmt: skip
)
def test_length_problem_boundaries(src_len: int, tgt_len: int, problem: str | None) -> None:
    data = DataConfig(max_tokens=10, max_ratio=3.0)
    assert _length_problem([7] * src_len, [7] * tgt_len, data) == problem


# --- the preprocess step -------------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path: Path) -> dict:
    """Train (prefix files), valid (TSV) and test (JSONL), each with pairs that cleaning must judge."""
    src, tgt = corpus(200)
    long_line = " ".join(WORDS * 60)  # over 1000 tokens
    ratio_src, ratio_tgt = "a", " ".join(WORDS[:40]).upper()  # at most 2 tokens against at least 19
    train = write_prefix(
        tmp_path / "train",
        encoded(src) + [b"", b"caf\xe9 ok", long_line.encode(), ratio_src.encode()],
        encoded(tgt) + [b"EMPTY SOURCE", b"CAFE OK", long_line.upper().encode(), ratio_tgt.encode()],
    )
    valid_src, valid_tgt = corpus(20, seed=1)
    no_sentence = "word " * 4000  # 20,000 characters: more than translate reads of a line (decode.line_bytes)
    valid_rows = [*zip(valid_src, valid_tgt), ("", "EMPTY"), (ratio_src, ratio_tgt), (no_sentence, "LONG")]
    valid = tmp_path / "valid.tsv"
    valid.write_bytes(b"".join(f"{s}\t{t}\n".encode() for s, t in valid_rows) + b"bad \xff\tBAD\n")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"en": s, "de": t}) + "\n" for s, t in zip(*corpus(10, seed=2))))
    return {"train": file_source(train), "valid": file_source(str(valid)), "test": file_source(str(test))}


def test_preprocess_writes_the_documented_files(
    tmp_path: Path, sources: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDir(tmp_path / "run")
    meta = preprocess(run, config(), sources)

    assert json.loads(run.meta.read_text()) == meta
    assert Config.load(run.config) == config()
    assert (run.tokenizer_dir / "spm.model").is_file()
    for split in ("train", "valid", "test"):
        assert run.has_split(split) and run.ids(split, "tgt").is_file()
    # The training text kept beside the encoded pairs: the same pairs, without those filtered out.
    assert run.text("train", "src").read_text(encoding="utf-8").splitlines() == corpus(200)[0]
    assert run.text("train", "tgt").read_text(encoding="utf-8").splitlines() == corpus(200)[1]

    assert meta["splits"]["train"] == {
        "read": 204, "invalid_utf8": 1, "kept": 200,
        "dropped": {"empty": 1, "invalid_utf8": 1, "too_long": 1, "bad_ratio": 1},
    }  # fmt: skip
    # valid keeps what train would drop for its length or broken bytes: it is a reference; a
    # "line" longer than translate reads goes.
    assert meta["splits"]["valid"] == {"read": 24, "invalid_utf8": 1, "dropped": {"empty": 1, "too_long": 1},
                                       "kept": 22}
    assert meta["splits"]["test"]["kept"] == 10
    assert (meta["src_lang"], meta["tgt_lang"]) == ("en", "de")
    assert meta["tokenizer"] == {"joint": True, "model_type": "unigram", "src_vocab_size": 50, "tgt_vocab_size": 50,
                                 "sampled_variants": 0}
    train_files = meta["sources"]["train"]["files"]
    assert [f["path"] for f in train_files] == [sources["train"].path + ".en", sources["train"].path + ".de"]
    assert train_files[0]["sha256"] == hashlib.sha256(Path(train_files[0]["path"]).read_bytes()).hexdigest()
    assert meta["created"] and meta["sources"]["valid"]["kind"] == "tsv"

    tokenizer = Tokenizer.load(run.tokenizer_dir)
    train_tgt = EncodedSide.open(run, "train", "tgt")
    assert tokenizer.decode_tgt([train_tgt[i].tolist() for i in range(len(train_tgt))]) == corpus(200)[1]
    valid_refs = run.text("valid", "tgt").read_text(encoding="utf-8").splitlines()
    assert valid_refs == corpus(20, seed=1)[1] + [" ".join(WORDS[:40]).upper(), "BAD"]
    assert len(EncodedSide.open(run, "valid", "src")) == len(valid_refs)

    out, err = capsys.readouterr()
    assert out == ""
    assert "train" in err and "kept" in err


def test_preprocess_refuses_to_overwrite_without_force(tmp_path: Path, sources: dict) -> None:
    run = RunDir(tmp_path / "run")
    preprocess(run, config(), sources)
    before = run.meta.read_text()
    with pytest.raises(UserError, match="already preprocessed .* pass --force"):
        preprocess(run, config(max_tokens=5), sources)
    assert run.meta.read_text() == before


def test_preprocess_with_force_replaces_every_old_output(
    tmp_path: Path, sources: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDir(tmp_path / "run")
    preprocess(run, config(), sources)
    run.checkpoints.mkdir()
    (run.checkpoints / "last.pt").write_bytes(b"")
    separate = config(tokenizer={"joint": False, "vocab_size": 40})
    meta = preprocess(run, separate, {"train": sources["train"], "valid": sources["valid"]}, force=True)
    assert set(meta["splits"]) == {"train", "valid"}
    assert not run.has_split("test") and not run.text("test", "src").exists()
    assert not (run.tokenizer_dir / "spm.model").exists()
    assert Tokenizer.load(run.tokenizer_dir).joint is False
    assert "holds models trained on the old data" in capsys.readouterr().err


def test_a_failed_or_interrupted_redo_leaves_the_run_as_it_was(tmp_path: Path, sources: dict, monkeypatch) -> None:
    run = RunDir(tmp_path / "run")
    preprocess(run, config(), sources)
    before = {path: path.read_bytes() for path in run.root.rglob("*") if path.is_file() and path != run.lock_file}
    with pytest.raises(UserError):  # a mistake found after the tokenizer is trained: misaligned references
        valid = write_prefix(tmp_path / "valid", [b"a", b"b"], [b"c"])
        preprocess(run, config(), {"train": sources["train"], "valid": file_source(valid)}, force=True)
    monkeypatch.setattr("lstmmt.preprocess.train_tokenizer", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the tokenizer trains
        preprocess(run, config(), sources, force=True)
    assert {path: path.read_bytes() for path in before} == before
    monkeypatch.undo()
    meta = preprocess(run, config(tokenizer={"vocab_size": 60}), sources, force=True)  # the next redo goes through
    assert not run.staging.root.exists() and meta["tokenizer"]["src_vocab_size"] == 60
    assert run.read_meta() == meta


def test_length_filters_that_drop_everything_are_a_user_error(tmp_path: Path, sources: dict) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="data.max_tokens=1"):
        preprocess(run, config(max_tokens=1), sources)
    assert not run.meta.exists()


def test_a_corpus_with_nothing_usable_is_a_user_error(tmp_path: Path) -> None:
    train = write_prefix(tmp_path / "train", [b"", b"a"], [b"b", b"  "])
    with pytest.raises(UserError, match="no usable train pairs .*2 read, dropped 2 empty"):
        preprocess(RunDir(tmp_path / "run"), config(), {"train": file_source(train)})


@pytest.mark.parametrize(
    ("names", "message"), [(["valid"], "needs a train source"), (["train", "dev"], "unknown split")]
)
def test_split_names_are_checked(tmp_path: Path, names: list[str], message: str) -> None:
    source = file_source(str(tmp_path / "corpus"))
    with pytest.raises(UserError, match=message):
        preprocess(RunDir(tmp_path / "run"), config(), dict.fromkeys(names, source))


def test_optional_dataset_split_is_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datasets = pytest.importorskip("datasets")  # absent on the GPU machine
    datasets.disable_progress_bars()
    src, tgt = corpus(200)
    folder = str(tmp_path / "ds")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"en": src, "de": tgt})}).save_to_disk(folder)
    train = dataset_source(folder, None, "train")
    optional = {"train": train, "valid": dataset_source(folder, None, "validation", required=False)}
    meta = preprocess(RunDir(tmp_path / "run"), config(), optional)
    assert set(meta["splits"]) == {"train"}
    assert "no split 'validation'" in capsys.readouterr().err
    required = {"train": train, "valid": dataset_source(folder, None, "validation")}
    with pytest.raises(MissingSplit):
        preprocess(RunDir(tmp_path / "run2"), config(), required)


def test_encoding_in_chunks_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training split streams through ENCODE_CHUNK pairs at a time; chunk borders must not show."""
    src, tgt = corpus(300, seed=4)
    tgt[5] = " ".join(["X"] * 400)  # a bad length ratio, dropped
    prefix = write_prefix(tmp_path / "c", encoded(src), encoded(tgt))
    arrays = {}
    for chunk in (50_000, 7):
        monkeypatch.setattr("lstmmt.preprocess.ENCODE_CHUNK", chunk)
        run = RunDir(tmp_path / f"run{chunk}")
        meta = preprocess(run, config(), {"train": file_source(prefix)})
        assert meta["splits"]["train"]["kept"] == 299 and meta["splits"]["train"]["dropped"]["bad_ratio"] == 1
        arrays[chunk] = [np.load(path("train", side)).tolist()
                         for path in (run.ids, run.offsets) for side in ("src", "tgt")]
        assert not [p for p in run.data_dir.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert arrays[7] == arrays[50_000]

