"""The budget-aware learning rate: where it stands at the start, middle and end of a budget,
and a resumed run continuing the same schedule; validation that follows training time."""

import json
import math

import pytest

from lstmmt import checkpoint
from lstmmt.config import TrainConfig
from lstmmt.schedule import learning_rate
from tests.helpers import TINY_TRAINING, assert_one_line_error, invoke, preprocess_toy

BUDGET = TrainConfig(lr=1e-3, lr_min=1e-5, warmup_steps=10, lr_schedule="budget", decay_share=1.0, max_time="30m",
                     max_steps=100_000)


def test_budget_rate_falls_linearly_with_the_time_spent():
    assert learning_rate(BUDGET, 0, elapsed=0.0) == pytest.approx(1e-4)  # warm-up: 1/10 of the rate
    assert learning_rate(BUDGET, 2, elapsed=90.0) == pytest.approx(1e-3 * 0.95 + 1e-5 * 0.05)  # 5% of 30 min: warm
    assert learning_rate(BUDGET, 10, elapsed=1.0) == pytest.approx(1e-3, rel=1e-3)
    assert learning_rate(BUDGET, 300, elapsed=900.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(BUDGET, 600, elapsed=1800.0) == pytest.approx(1e-5)
    assert learning_rate(BUDGET, 700, elapsed=2000.0) == pytest.approx(1e-5)  # never below lr_min


def test_budget_with_a_decay_share_holds_the_rate_then_decays_over_the_end():
    wsd = TrainConfig(lr=1e-3, lr_min=0.0, warmup_steps=10, lr_schedule="budget", decay_share=0.2, max_time="1000s")
    assert learning_rate(wsd, 0, elapsed=0.0) == pytest.approx(1e-4)  # warm-up as before
    assert learning_rate(wsd, 100, elapsed=500.0) == pytest.approx(1e-3)  # stable
    assert learning_rate(wsd, 150, elapsed=800.0) == pytest.approx(1e-3)  # the decay starts at 80%
    assert learning_rate(wsd, 170, elapsed=900.0) == pytest.approx(0.5e-3)
    assert learning_rate(wsd, 190, elapsed=1000.0) == pytest.approx(0.0)


def test_budget_in_steps_when_steps_end_first():
    steps = TrainConfig(lr=1e-3, lr_min=0.0, warmup_steps=0, lr_schedule="budget", decay_share=1.0, max_steps=1000,
                        max_time="10h")
    assert learning_rate(steps, 250, elapsed=60.0) == pytest.approx(0.75e-3)
    assert learning_rate(steps, 1000, elapsed=60.0) == pytest.approx(0.0)


def train_lrs(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if r["event"] == "train"}


def test_a_resumed_run_continues_the_budget_schedule(tmp_path):
    """The rate depends on the training time of all earlier sessions, which the checkpoint holds."""
    settings = [*TINY_TRAINING, "--set", "train.lr_schedule=budget", "--set", "train.decay_share=1.0",
                "--set", "train.max_time=1000s",
                "--set", "train.log_every=1", "--set", "train.lr=0.01", "--set", "train.lr_min=0.0001"]
    run = preprocess_toy(tmp_path, 300, settings)
    # Sessions end with epochs, so that max_time is not what stops them.
    assert invoke("train", run, "--set", "train.max_epochs=1").exit_code == 0
    first = train_lrs(run)
    end = max(first)
    assert first[end] > 0.009  # a few seconds of a 1000 s budget: near the peak
    last = checkpoint.load(run / "checkpoints/last.pt")
    last["state"]["elapsed"] = 900.0  # as if the first session had trained for 15 minutes
    checkpoint.save(run / "checkpoints/last.pt", last)
    for step_file in run.glob("checkpoints/step-*.pt"):
        step_file.unlink()
    assert invoke("train", run, "--set", "train.max_epochs=2").exit_code == 0
    resumed = train_lrs(run)
    assert resumed[end] == first[end]  # the first session's records are kept
    assert 0.0001 < resumed[end + 1] < 0.0015  # 90% of the budget spent: a tenth of the way above lr_min
    assert resumed[max(resumed)] <= resumed[end + 1]


@pytest.mark.parametrize("interval, expected", [("0.001s", 8), ("10h", 1)])
def test_validation_follows_training_time(tmp_path, interval, expected):
    run = preprocess_toy(tmp_path, 300, [*TINY_TRAINING, "--set", "train.valid_every=1000"])
    assert invoke("train", run, "--max-steps", "8", "--set", f"train.valid_every_time={interval}").exit_code == 0
    records = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["event"] == "valid"]
    assert len(valid) == expected  # every step, or only at the end
    assert all(r["seconds"] >= 0 and math.isfinite(r["bleu"]) for r in valid)


def test_auto_is_the_budget_schedule_when_training_is_bounded_and_plateau_when_not():
    assert TrainConfig(max_time="12m").schedule == "budget"
    assert TrainConfig(max_steps=500).schedule == "budget"
    assert TrainConfig().schedule == "plateau"
    assert TrainConfig(lr_schedule="constant", max_time="1h").schedule == "constant"
    unbounded = TrainConfig(lr_schedule="auto", lr=1e-3, warmup_steps=0)
    assert learning_rate(unbounded, 5000, lr_scale=0.25) == pytest.approx(0.25e-3)  # plateau: the scale applies


def test_the_budget_schedule_without_a_budget_is_refused_before_training(tmp_path):
    run = preprocess_toy(tmp_path, 300, [*TINY_TRAINING, "--set", "train.lr_schedule=budget"])
    result = invoke("train", run)
    assert_one_line_error(result, "train.lr_schedule=budget", "--max-time")
    assert not list((run / "checkpoints").glob("*.pt"))
