"""Training and `lstmmt average` score a checkpoint on the validation split one way
(lstmmt/validation.py), so the score average compares is the score training recorded."""

import shutil
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstmmt import checkpoint, validation
from lstmmt.averaging import average_checkpoints
from lstmmt.cli import app
from lstmmt.rundir import RunDir
from lstmmt.tokenizer import Tokenizer
from lstmmt.validation import Validation

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def fingerprint(hypotheses: list[str], references: list[str]) -> float:
    """A stand-in for BLEU that changes with any hypothesis: a tiny model's BLEU is 0.0 whatever it outputs."""
    return float(zlib.crc32("\n".join(hypotheses).encode("utf-8")))


def test_a_checkpoint_scores_what_training_recorded_for_it(tiny_run):
    """Loss, perplexity and BLEU of best.pt recomputed outside training equal those in its payload:
    the same ids, model and precision."""
    run = RunDir(tiny_run)
    best = checkpoint.load(run.checkpoint("best"))
    model, _ = checkpoint.model_of(best, Tokenizer.load(run.tokenizer_dir), run.checkpoint("best"))
    scores = Validation.of_checkpoints(run, "cpu").scores(model)
    assert scores == {key: best["valid"][key] for key in ("loss", "ppl", "bleu")}


def test_average_scores_best_as_training_did_when_sources_exceed_max_source_tokens(tiny_run, tmp_path, monkeypatch):
    """translate truncates inputs at decode.max_source_tokens; validation searches the encoded
    split whole, and average must too, or it compares the average with another score of best.pt."""
    monkeypatch.setattr(validation, "bleu", fingerprint)
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    result = CliRunner().invoke(app, ["train", str(run), "--restart", "--max-steps", "30",
                                      "--set", "train.valid_every=15", "--set", "decode.max_source_tokens=2"])
    assert result.exit_code == 0, result.output
    recorded = checkpoint.load(run / "checkpoints/best.pt")["valid"]["bleu"]
    paths = [run / "checkpoints/step-30.pt", run / "checkpoints/step-15.pt"]
    averaged = average_checkpoints(RunDir(run), paths, tmp_path / "averaged.pt", device="cpu")
    assert averaged.best_bleu == recorded and averaged.averaged_bleu is not None
