"""Nothing lost: exact resume after SIGKILL, clean stop on SIGINT/SIGTERM, safe and checked checkpoints."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstmmt import checkpoint
from lstmmt.errors import UserError
from lstmmt.rundir import RunDir
from tests.helpers import TINY_TRAINING, copy_run, invoke, preprocess_toy, write_corpus

STEPS = 150


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    return preprocess_toy(tmp_path_factory.mktemp("resume"), 600, TINY_TRAINING)


def start_training(run: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "lstmmt", "train", str(run), "--max-steps", str(STEPS), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    payload = checkpoint.load(run / "checkpoints/last.pt")
    assert payload["step"] == STEPS
    return payload["model"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(preprocessed, tmp_path):
    reference = copy_run(preprocessed, tmp_path, "reference")
    assert start_training(reference).wait() == 0
    expected = final_weights(reference)

    run = copy_run(preprocessed, tmp_path, "killed")
    # Kill right after a checkpoint, a few steps past one, and before the first validation of a resumed session.
    for moment in ("checkpoints/step-30.pt", "checkpoints/step-75.pt", None):
        process = start_training(run)
        if moment is None:
            time.sleep(4.0)  # somewhere in the middle: at start-up or mid-step
        else:
            wait_for(run / moment, process)
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    process = start_training(run)
    output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "Resuming from" in output
    resumed = final_weights(run)
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(preprocessed, tmp_path, sig, code):
    """SIGHUP comes from a closed terminal or ssh session."""
    run = copy_run(preprocessed, tmp_path, "signalled")
    process = start_training(run, "--set", "train.valid_every=100000")
    wait_for(run / "logs/metrics.jsonl", process)  # training is under way
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == code, output
    stopped = re.search(rf"Stopped by {signal.Signals(sig).name} at step (\d+);.* to resume", " ".join(output.split()))
    assert stopped, output
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == int(stopped.group(1)) > 0


def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_good_one(preprocessed, tmp_path):
    run = copy_run(preprocessed, tmp_path, "corrupt")
    assert invoke("train", run, "--max-steps", "30").exit_code == 0
    newest = run / "checkpoints/step-30.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    (run / "checkpoints/last.pt").unlink()
    result = invoke("train", run, "--max-steps", "45")
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "step-30.pt" in result.output
    assert "Resuming from" in result.output and "step 15" in result.output
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == 45


def test_changed_architecture_on_resume_is_a_clear_error(preprocessed, tmp_path):
    run = copy_run(preprocessed, tmp_path, "arch")
    assert invoke("train", run, "--max-steps", "15").exit_code == 0
    result = invoke("train", run, "--max-steps", "30", "--set", "model.hidden_size=64")
    assert result.exit_code == 1
    assert "model.hidden_size" in result.output and "--restart" in result.output


def test_checkpoint_of_another_run_is_rejected(preprocessed, tmp_path):
    run = copy_run(preprocessed, tmp_path, "mine")
    assert invoke("train", run, "--max-steps", "15").exit_code == 0
    other = tmp_path / "other"
    write_corpus(tmp_path / "corpus", 600, 20, 5)
    assert invoke("preprocess", other, "--src-lang", "en", "--tgt-lang", "de", "--train", tmp_path / "corpus/train",
                  *TINY_TRAINING, "--set", "tokenizer.vocab_size=120").exit_code == 0
    (other / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(run / "checkpoints/last.pt", other / "checkpoints/last.pt")
    result = invoke("translate", other, "--checkpoint", "last")
    assert result.exit_code == 1 and "belongs to another run" in result.output


class Payload:
    """Pickles into a call of os.system: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_fails_cleanly_without_running_its_payload(tmp_path):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pt"
    torch.save({"format": 1, "model": {}, "evil": Payload(marker)}, planted)
    with pytest.raises(UserError, match="unsafe") as error:
        checkpoint.load(planted)
    assert not marker.exists()
    assert "weights_only" not in str(error.value)  # torch's advice to load it unsafely is not passed on
    torn = tmp_path / "torn.pt"
    torn.write_bytes(planted.read_bytes()[:100])
    with pytest.raises(UserError, match=r"truncated or corrupt\): PytorchStreamReader failed reading zip archive"):
        checkpoint.load(torn)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}, "step": 1})

    def disk_full(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        checkpoint.save(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_repeated_non_finite_losses_stop_training_with_good_weights(preprocessed, tmp_path, monkeypatch):
    from lstmmt import model as model_module

    run = copy_run(preprocessed, tmp_path, "nan")
    assert invoke("train", run, "--max-steps", "15").exit_code == 0
    good = checkpoint.load(run / "checkpoints/last.pt")["model"]
    original = model_module.output_loss
    monkeypatch.setattr(model_module, "output_loss", lambda *a, **k: original(*a, **k) * float("nan"))
    result = invoke("train", run, "--max-steps", "100")
    assert result.exit_code == 1
    assert not (run / "train.json").exists()
    assert "non-finite" in result.output and "batch skipped" in result.output
    saved = checkpoint.load(run / "checkpoints/last.pt")
    # Skips are counted on the device and read at log time (every 5 steps here): the stop comes
    # at the first log after 10 skips in a row, and no skipped batch changed a weight.
    assert saved["state"]["nonfinite_in_a_row"] >= 10 and saved["step"] <= 15 + 10 + 5
    assert all(torch.equal(saved["model"][k], good[k]) for k in good)
    assert RunDir(run).checkpoints.exists()


def test_train_json_marks_finished_training_only(preprocessed, tmp_path):
    run = copy_run(preprocessed, tmp_path, "summary")
    process = start_training(run, "--set", "train.valid_every=100000")
    wait_for(run / "logs/metrics.jsonl", process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert not (run / "train.json").exists()
    assert invoke("train", run, "--max-steps", "20").exit_code == 0
    import json

    summary = json.loads((run / "train.json").read_text())
    assert summary["stopped"] == "max_steps" and summary["step"] == 20


def test_resumed_metrics_list_each_step_once(preprocessed, tmp_path):
    import json

    run = copy_run(preprocessed, tmp_path, "metrics")
    process = start_training(run)
    wait_for(run / "checkpoints/step-30.pt", process)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert invoke("train", run, "--max-steps", "60").exit_code == 0
    steps = [(r["event"], r["step"]) for r in map(json.loads, (run / "logs/metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps))
    assert ("valid", 60) in steps and ("train", 35) in steps
