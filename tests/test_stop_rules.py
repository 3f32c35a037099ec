"""Why training stops, decided in one place from the state, the config and a step's events."""

import pytest

from lstmmt.config import TrainConfig
from lstmmt.train import MAX_NONFINITE, Events, TrainState, judge_validation, stop_reason

CONFIG = TrainConfig(max_steps=100, patience=3, lr_schedule="plateau", warmup_steps=10, lr_decay_factor=0.5)
EVERYTHING = dict(step=100, nonfinite_in_a_row=MAX_NONFINITE, bad_validations=3)


@pytest.mark.parametrize("state, events, reason", [
    (TrainState(step=50), Events(), ""),
    (TrainState(**EVERYTHING), Events(signal="SIGTERM", out_of_time=True, epochs_done=True), "SIGTERM"),
    (TrainState(**EVERYTHING), Events(out_of_time=True, epochs_done=True), "max_steps"),
    (TrainState(**EVERYTHING | {"step": 50}), Events(out_of_time=True, epochs_done=True), "max_time"),
    (TrainState(**EVERYTHING | {"step": 50}), Events(epochs_done=True), "non-finite loss"),
    (TrainState(step=50, bad_validations=3), Events(epochs_done=True), "max_epochs"),
    (TrainState(step=50, bad_validations=3), Events(), "patience"),
])
def test_the_first_reason_that_holds_wins(state, events, reason):
    assert stop_reason(state, CONFIG, events) == reason


def test_patience_zero_never_stops():
    assert stop_reason(TrainState(step=50, bad_validations=99), TrainConfig(max_steps=100, patience=0), Events()) == ""


def test_a_validation_without_a_better_bleu_counts_against_patience_and_decays_the_rate_after_warm_up():
    state = TrainState(step=20, best_bleu=10.0, bad_validations=1)
    assert not judge_validation(state, 10.0, CONFIG)
    assert (state.bad_validations, state.lr_scale) == (2, 0.5)
    assert judge_validation(state, 10.5, CONFIG)
    assert (state.best_bleu, state.bad_validations, state.lr_scale) == (10.5, 0, 0.5)
    warming = TrainState(step=5, best_bleu=10.0)
    judge_validation(warming, 9.0, CONFIG)
    assert (warming.bad_validations, warming.lr_scale) == (1, 1.0)
