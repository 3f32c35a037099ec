"""The learning rate at each step: a pure function of the config and the training state."""

from __future__ import annotations

import math

from lstmmt.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, lr_scale: float) -> float:
    """Linear warm-up to config.lr, then constant, 1/sqrt(step) decay, or the plateau scale
    (`lr_scale`, halved by validation when BLEU stops improving; see Trainer)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "inverse_sqrt":
        return config.lr * math.sqrt(max(config.warmup_steps, 1) / (step + 1))
    if config.lr_schedule == "plateau":
        return max(config.lr * lr_scale, config.lr_min)
    return config.lr
