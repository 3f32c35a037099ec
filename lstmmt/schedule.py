"""The learning rate at each step: a pure function of the config and where training stands."""

from __future__ import annotations

import math

from lstmmt.config import TrainConfig

BUDGET_WARMUP_SHARE = 0.05
"""With the budget schedule, warm-up ends after warmup_steps or this share of the budget,
whichever comes first: on a slow machine a 12-minute budget may hold fewer steps than
warmup_steps, and a run that never leaves warm-up never trains at its rate."""


def learning_rate(config: TrainConfig, step: int, lr_scale: float = 1.0, elapsed: float = 0.0) -> float:
    """Linear warm-up to config.lr over `warmup_steps`, then, by config.schedule (`auto` resolved),

    - constant: config.lr;
    - inverse_sqrt: config.lr * sqrt(warmup / step);
    - plateau: config.lr * lr_scale (halved by validations without a better BLEU), >= lr_min;
    - budget: config.lr, then linear decay to lr_min over the last `decay_share` of the
      budget, so a run of any length ends on a low rate (warm-up ends at the latest after
      BUDGET_WARMUP_SHARE of it);
      `elapsed` is the training time of the run, resumes included, so a resumed run continues the
      same schedule.
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    schedule = config.schedule
    if schedule == "budget":
        spent = budget_spent(config, step, elapsed)
        warm = max(warm, min(1.0, spent / BUDGET_WARMUP_SHARE))  # a short budget warms up sooner
        decayed = min(1.0, max(0.0, (spent - 1.0 + config.decay_share) / config.decay_share))
        return warm * (config.lr + (config.lr_min - config.lr) * decayed)
    if step < config.warmup_steps:
        return config.lr * warm
    if schedule == "inverse_sqrt":
        return config.lr * math.sqrt(max(config.warmup_steps, 1) / (step + 1))
    if schedule == "plateau":
        return max(config.lr * lr_scale, config.lr_min)
    return config.lr


def budget_spent(config: TrainConfig, step: int, elapsed: float) -> float:
    """The share of the training budget used up, in [0, 1]: steps of max_steps or seconds of
    max_time, whichever is further along."""
    spent = step / config.max_steps if config.max_steps is not None else 0.0
    if config.max_time is not None:
        spent = max(spent, elapsed / config.max_time_seconds)
    return min(1.0, spent)
