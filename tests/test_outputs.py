"""Outputs never destroy what they point at: FIFOs, devices, descriptors and symlinks keep their
kind, an output is never one of the command's inputs nor a file of the run, `average` never
replaces a training checkpoint, `preprocess` never takes over a folder that is not a run, and
stdout gets UTF-8 whatever the locale says."""

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lstmmt import checkpoint
from tests.helpers import TINY_RUN, invoke, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)
ROOT = Path(__file__).resolve().parents[1]


def assert_refused(result, *words: str) -> None:
    """Exit 1 with one error line naming `words`, before the model was loaded."""
    assert result.exit_code == 1, result.output
    assert "Translating on" not in result.stderr and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(word in errors[0] for word in words), result.stderr


def lstmmt(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmmt", *map(str, args)], capture_output=True,
                          env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("seven\nhalf past seven\n", encoding="utf-8")
    return path


@pytest.fixture
def expected(tiny_run, source, tmp_path) -> str:
    """What `translate -i source` writes into a new file."""
    result = invoke("translate", tiny_run, "-i", source, "-o", tmp_path / "expected.txt", "--beam", "1")
    assert result.exit_code == 0, result.output
    return (tmp_path / "expected.txt").read_text(encoding="utf-8")


def reading(path: Path) -> tuple[threading.Thread, list[bytes]]:
    """A thread reading `path` (a FIFO or a pipe's descriptor) to its end."""
    received: list[bytes] = []

    def read() -> None:
        with open(path, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


def test_a_fifo_output_stays_a_fifo_and_gets_the_translations(tiny_run, source, expected, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    thread, received = reading(fifo)
    result = invoke("translate", tiny_run, "-i", source, "-o", fifo, "--beam", "1")
    thread.join(60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received == [expected.encode("utf-8")]


def test_a_pipe_descriptor_output_gets_the_translations(tiny_run, source, expected):
    """`-o >(command)` passes /dev/fd/N, a pipe: it was replaced by a temporary file's rename."""
    read, write = os.pipe()
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(os.read(read, 1 << 20)), daemon=True)
    thread.start()
    try:
        result = invoke("translate", tiny_run, "-i", source, "-o", f"/dev/fd/{write}", "--beam", "1")
    finally:
        os.close(write)
        thread.join(60)
        os.close(read)
    assert result.exit_code == 0, result.output
    assert received == [expected.encode("utf-8")]


def test_a_symlink_output_stays_a_link_and_its_target_gets_the_translations(tiny_run, source, expected, tmp_path):
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n", encoding="utf-8")
    link.symlink_to(target.name)
    result = invoke("translate", tiny_run, "-i", source, "-o", link, "--beam", "1")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_text(encoding="utf-8") == expected


def test_a_character_device_output_stays_a_device(tiny_run, source, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
    result = invoke("translate", tiny_run, "-i", source, "-o", null, "--beam", "1")
    assert result.exit_code == 0, result.output
    mode = null.lstat().st_mode
    assert stat.S_ISCHR(mode) and null.lstat().st_rdev == os.makedev(1, 3)


def test_an_input_as_the_output_is_refused_and_kept(tiny_run, source, tmp_path):
    before = source.read_bytes()
    assert_refused(invoke("translate", tiny_run, "-i", source, "-o", source), "is the input")
    (tmp_path / "alias.txt").symlink_to(source)
    assert_refused(invoke("translate", tiny_run, "-i", tmp_path / "alias.txt", "-o", source), "is the input")
    targets = tmp_path / "targets.txt"
    targets.write_text("sieben\nhalb acht\n", encoding="utf-8")
    result = invoke("score", tiny_run, "--src", source, "--tgt", targets, "-o", targets)
    assert result.exit_code == 1 and "is the input" in result.stderr and "Scoring on" not in result.stderr
    assert source.read_bytes() == before and targets.read_text(encoding="utf-8") == "sieben\nhalb acht\n"
    result = invoke("score", tiny_run, "--src", "-", "--tgt", "-", input="seven\n")
    assert result.exit_code == 1 and "only one input can be - (stdin)" in result.output


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run (step-30.pt, last.pt and best.pt: one checkpoint, validated once)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.mark.parametrize("owned", ["checkpoints/best.pt", "data/valid.src.txt", "config.yaml", "tokenizer/spm.model",
                                   "checkpoints/new.txt", "logs/metrics.jsonl", "logs/train.log", "train.json",
                                   ".lock", "scores/mine.json", "shortlist.npz", ".preprocess/config.yaml"])
def test_files_of_the_run_are_refused_as_outputs(run_copy, source, owned):
    path = run_copy / owned
    before = path.read_bytes() if path.exists() else None
    assert_refused(invoke("translate", run_copy, "-i", source, "-o", path), "belongs to the run")
    assert_refused(invoke("plot-attention", run_copy, "seven", "-o", path), "belongs to the run")
    assert_refused(invoke("plot", run_copy, "-o", path), "belongs to the run")
    assert (path.read_bytes() if path.exists() else None) == before


def test_average_refuses_what_training_keeps_and_its_inputs(run_copy, tmp_path):
    best = (run_copy / "checkpoints/best.pt").read_bytes()
    for name in ("best.pt", "last.pt", "step-30.pt", "step-99999.pt"):
        result = invoke("average", run_copy, "--last", "1", "-o", run_copy / "checkpoints" / name)
        assert result.exit_code == 1 and "a checkpoint training writes" in result.stderr, result.output
    shutil.copy(run_copy / "checkpoints/best.pt", tmp_path / "backup.pt")
    result = invoke("average", run_copy, "--last", "1", "-o", tmp_path / "backup.pt")
    assert result.exit_code == 1 and "is a training checkpoint" in result.stderr, result.output
    result = invoke("average", run_copy, "--last", "1", "-o", run_copy / "data/valid.src.txt")
    assert result.exit_code == 1 and "belongs to the run" in result.stderr, result.output
    assert (run_copy / "checkpoints/best.pt").read_bytes() == best
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["best.pt", "last.pt", "step-30.pt"]
    for target in (run_copy / "checkpoints/averaged.pt", tmp_path / "mine.pt"):
        for _ in range(2):  # an earlier average is replaced
            result = invoke("average", run_copy, "--last", "1", "-o", target)
            assert result.exit_code == 0, result.output
        assert "averaged_from" in checkpoint.load(target)


def test_an_average_equal_to_best_is_not_scored_against_it(run_copy):
    result = invoke("average", run_copy, "--last", "1")
    assert result.exit_code == 0, result.output
    assert "the same weights as best.pt" in result.stderr and "validation BLEU" not in result.stderr


def test_training_skips_a_checkpoint_without_training_state(run_copy):
    """An averaged model saved under a step name (by hand: average refuses it) is not resumed from."""
    assert invoke("average", run_copy, "--last", "1").exit_code == 0
    shutil.copy(run_copy / "checkpoints/averaged.pt", run_copy / "checkpoints/step-99999.pt")
    result = invoke("train", run_copy, "--max-steps", "32")
    assert result.exit_code == 0, result.output
    assert "step-99999.pt holds no training state" in " ".join(result.output.split())
    assert "Resuming from" in result.output and checkpoint.load(run_copy / "checkpoints/last.pt")["step"] == 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outputs") / "corpus"
    write_corpus(folder, 300, 20, 0)
    return folder


def preprocess(run: Path, corpus: Path, *extra: str):
    return invoke("preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                  "--valid", corpus / "valid", *TINY_RUN, *extra)


def test_preprocess_refuses_a_folder_that_is_not_a_run(corpus, tmp_path):
    folder = tmp_path / "mine"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.yaml").write_text("my: settings\n", encoding="utf-8")
    (folder / "tokenizer/spm.model").write_bytes(b"my tokenizer")
    result = preprocess(folder, corpus)
    assert result.exit_code == 1, result.output
    assert "--force" in result.stderr and "no finished lstmmt run" in result.stderr
    assert (folder / "config.yaml").read_text(encoding="utf-8") == "my: settings\n"
    assert (folder / "tokenizer/spm.model").read_bytes() == b"my tokenizer"
    assert preprocess(folder, corpus, "--force").exit_code == 0
    assert (folder / "data/meta.json").exists()


def test_preprocess_takes_an_empty_folder_or_the_leftovers_of_an_interrupted_one(corpus, tmp_path):
    run = tmp_path / "run"
    (run / ".preprocess/data/.train-text.abc123").mkdir(parents=True)
    (run / ".preprocess/data/.train-text.abc123/train.src.txt").write_text("a copy of the corpus\n")
    (run / ".lock").write_text("12345 preprocess\n")
    result = preprocess(run, corpus)
    assert result.exit_code == 0, result.output
    assert not (run / ".preprocess").exists()


def test_translate_writes_utf8_to_an_ascii_stdout(tiny_run, source):
    """The alignment's pieces carry SentencePiece's word mark U+2581, which ASCII cannot encode."""
    result = lstmmt("translate", tiny_run, "-i", source, "--format", "jsonl", "--alignment", "--device", "cpu",
                    PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert len(lines) == 2 and "\u2581" in "".join(lines[0]["alignment"]["source"])


def test_evaluate_prints_its_table_to_an_ascii_stdout(tmp_path):
    (tmp_path / "hyp.txt").write_text("a b c d e f g h\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("a b c d e f g i\n", encoding="utf-8")
    result = lstmmt("evaluate", tmp_path / "run", "--hyp", tmp_path / "hyp.txt", "--ref", tmp_path / "ref.txt",
                    PYTHONIOENCODING="ascii", COLUMNS="80")
    assert result.returncode == 0, result.stderr.decode()
    assert "BLEU" in result.stdout.decode("utf-8") and b"error" not in result.stderr


def test_a_checkpoint_written_into_a_fifo_streams_whole(tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    thread, received = reading(fifo)
    checkpoint.save(fifo, {"model": {"w": torch.ones(2)}, "step": 1})
    thread.join(60)
    (tmp_path / "copy.pt").write_bytes(received[0])
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and checkpoint.load(tmp_path / "copy.pt")["step"] == 1
