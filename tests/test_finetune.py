"""Fine-tuning: `train CHILD --init-from PARENT` starts a run from a parent's weights, with a fresh
optimizer and schedule, the parent's model settings and tokenizer; the child records its parent."""

import json
from pathlib import Path

import pytest
import torch

from lstmmt import checkpoint
from lstmmt.config import Config
from lstmmt.rundir import RunDir, sha256_file
from lstmmt.tokenizer import Tokenizer
from lstmmt.train import Trainer
from tests.helpers import assert_one_line_error, copy_run, invoke, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

CHILD_SETTINGS = [
    "--set", "data.max_ratio=10", "--set", "train.batch_tokens=1000", "--set", "train.valid_every=10",
    "--set", "train.log_every=5", "--set", "train.precision=fp32", "--set", "decode.precision=fp32",
    "--set", "decode.max_len_b=3",
]
"""The tiny run's settings less its model section, which a child takes from its parent."""
FAST = ["--set", "train.lr_schedule=constant", "--set", "train.warmup_steps=0"]
"""A child that learns from its first step (the parent trained only 30 steps of its warm-up)."""


def preprocess_child(parent: Path, child: Path, *extra: object, corpus: Path | None = None) -> Path:
    """CHILD preprocessed from the parent's corpus (or `corpus`), with the options `extra`."""
    corpus = corpus or parent.parent / "corpus"
    result = invoke("preprocess", child, "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                    "--valid", corpus / "valid", *CHILD_SETTINGS, *extra)
    assert result.exit_code == 0, result.output
    return child


@pytest.fixture(scope="module")
def child(tiny_run, tmp_path_factory) -> Path:
    """A run preprocessed with the tiny run's tokenizer on its corpus; never trained."""
    return preprocess_child(tiny_run, tmp_path_factory.mktemp("child") / "run", "--tokenizer-from", tiny_run)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run but its lock file (which each command takes), with its bytes."""
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_a_child_starts_from_the_parent_s_weights(tiny_run, child):
    parent = checkpoint.load_parent(tiny_run)
    trainer = Trainer(RunDir(child), parent.child_config(Config.load(child / "config.yaml")), torch.device("cpu"))
    trainer.start_from(parent)
    before_any_step = trainer.validation.loss(trainer.model)

    best = checkpoint.load(tiny_run / "checkpoints/best.pt")
    parent_model, _ = checkpoint.model_of(best, Tokenizer.load(tiny_run / "tokenizer"), tiny_run)
    assert before_any_step == trainer.validation.loss(parent_model)
    assert before_any_step == pytest.approx(best["valid"]["loss"], rel=1e-6)  # what the parent's training measured


def test_a_child_trains_from_its_parent_and_records_it(tiny_run, child, tmp_path):
    run = copy_run(child, tmp_path)
    result = invoke("train", run, "--init-from", tiny_run, "--max-steps", 10, "--set", "model.dropout=0.1", *FAST)
    assert result.exit_code == 0, result.output
    assert "Starting from the weights of" in result.output

    config = Config.load(run / "config.yaml")
    parent_config = Config.load(tiny_run / "config.yaml")
    assert config.train.init_from == str(tiny_run.resolve())
    assert (config.model.hidden_size, config.model.embed_size) == (32, 16)  # the parent's, not the defaults
    assert config.model.dropout == 0.1 and parent_config.model.dropout != 0.1  # a setting that shapes no weight
    summary = json.loads((run / "train.json").read_text())
    assert summary["init_from"] == {"path": str(tiny_run.resolve()),
                                    "sha256": sha256_file(tiny_run / "checkpoints/best.pt")}
    parent_loss = checkpoint.load(tiny_run / "checkpoints/best.pt")["valid"]["loss"]
    assert checkpoint.load(run / "checkpoints/last.pt")["valid"]["loss"] < parent_loss

    info = invoke("info", run)
    assert info.exit_code == 0, info.output
    assert f"started from {tiny_run.resolve()}" in " ".join(info.stdout.split())
    assert summary["init_from"]["sha256"][:16] in info.stdout

    again = invoke("train", run, "--init-from", tiny_run, "--max-steps", 20)
    assert_one_line_error(again, "has checkpoints already", "--restart")
    restarted = invoke("train", run, "--init-from", tiny_run, "--max-steps", 5, "--restart")
    assert restarted.exit_code == 0 and "Starting from the weights of" in restarted.output, restarted.output


def test_a_resumed_child_continues_exactly(tiny_run, child, tmp_path):
    straight, resumed = copy_run(child, tmp_path, "straight"), copy_run(child, tmp_path, "resumed")
    assert invoke("train", straight, "--init-from", tiny_run, "--max-steps", 20, *FAST).exit_code == 0
    assert invoke("train", resumed, "--init-from", tiny_run, "--max-steps", 10, *FAST).exit_code == 0
    result = invoke("train", resumed, "--max-steps", 20)
    assert result.exit_code == 0, result.output
    assert "Resuming from" in result.output and "Starting from" not in result.output
    expected, got = (checkpoint.load(run / "checkpoints/last.pt") for run in (straight, resumed))
    assert got["step"] == 20 and got["init_from"] == expected["init_from"]
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
    assert json.loads((resumed / "train.json").read_text())["init_from"]["path"] == str(tiny_run.resolve())


@pytest.mark.parametrize("kind", ["vocabulary size", "tokenizer"])
def test_a_child_with_another_vocabulary_is_one_line_and_nothing_is_written(tiny_run, tmp_path, kind):
    if kind == "vocabulary size":
        run, named = preprocess_child(tiny_run, tmp_path / "child", "--vocab-size", 90), ["100 pieces", "90 pieces"]
    else:  # as many pieces, learnt from another corpus
        write_corpus(tmp_path / "corpus", 300, 20, 5, seed=3)
        run = preprocess_child(tiny_run, tmp_path / "child", "--vocab-size", 100, corpus=tmp_path / "corpus")
        named = [RunDir(run).tokenizer_digest()[:12], RunDir(tiny_run).tokenizer_digest()[:12]]
    before = snapshot(run)
    result = invoke("train", run, "--init-from", tiny_run, "--max-steps", 5)
    assert_one_line_error(result, str(tiny_run.resolve()), *named, "--tokenizer-from")
    assert snapshot(run) == before


def test_a_model_setting_that_changes_shapes_is_one_line_and_nothing_is_written(tiny_run, child, tmp_path):
    run = copy_run(child, tmp_path)
    before = snapshot(run)
    result = invoke("train", run, "--init-from", tiny_run, "--max-steps", 5, "--set", "model.hidden_size=64")
    assert_one_line_error(result, "model.hidden_size", "64", "32", str(tiny_run.resolve()))
    assert snapshot(run) == before


@pytest.mark.parametrize("kind", ["run", "checkpoint", "release"])
def test_a_parent_is_a_run_a_checkpoint_file_or_a_release(tiny_run, tmp_path, kind):
    best = tiny_run / "checkpoints/best.pt"
    if kind == "release":
        path = tmp_path / "release"
        assert invoke("export", tiny_run, "-o", path).exit_code == 0
        sha = json.loads((path / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]
    else:
        path, sha = (tiny_run if kind == "run" else best), sha256_file(best)
    parent = checkpoint.load_parent(path)
    assert parent.record() == {"path": str(path.resolve()), "sha256": sha}
    assert parent.tokenizer_digest == (None if kind == "checkpoint" else RunDir(tiny_run).tokenizer_digest())
    assert parent.config.model == Config.load(tiny_run / "config.yaml").model
    expected = checkpoint.load(best)["model"]
    assert parent.weights.keys() == expected.keys()
    assert all(torch.equal(parent.weights[name], value) for name, value in expected.items())
