"""`lstmmt plot`: the learning curve of a run as a PNG, so a user can look instead of read.

Validation BLEU and loss against step and against training time, from logs/metrics.jsonl.
matplotlib is an optional extra (`pip install 'lstmmt[plot]'`), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lstmmt.errors import UserError
from lstmmt.metrics_log import read_metrics
from lstmmt.rundir import RunDir, check_output, write_output


def save_png(figure: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG into `path`, opened to append as rundir.write_output asks."""
    with open(path, "ab") as file:
        figure.savefig(file, format="png", dpi=dpi)


def read_events(run: RunDir, event: str) -> list[dict]:
    if not run.metrics.exists():
        raise UserError(f"{run.root} has no training log: run `lstmmt train {run.root}` first")
    return read_metrics(run.metrics, event)


def plot_learning_curve(run: RunDir, output: Path | None = None) -> Path:
    """Write RUN/logs/learning_curve.png (or `output`, checked and written as rundir's
    check_output and write_output do) and return its path."""
    target = Path(output) if output else run.learning_curve
    check_output(target, [run.metrics], run=run)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'lstmmt[plot]' "
                        "(in a checkout: pip install -e '.[plot]')") from None
    valid, train = read_events(run, "valid"), read_events(run, "train")
    if not valid:
        raise UserError(f"{run.root} has no validation results yet: train past the first validation first")
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    x_axes = [("step", "step", 1.0), ("elapsed", "training time (minutes)", 60.0)]
    for column, (x_key, x_label, scale) in enumerate(x_axes):
        bleu_axis, loss_axis = axes[0][column], axes[1][column]
        x_valid = [r[x_key] / scale for r in valid]
        bleu_axis.plot(x_valid, [r["bleu"] for r in valid], marker="o", label="validation BLEU")
        loss_axis.plot([r[x_key] / scale for r in train], [r["loss"] for r in train], alpha=0.6, label="training loss")
        loss_axis.plot(x_valid, [r["loss"] for r in valid], marker="o", label="validation loss")
        loss_axis.set_xlabel(x_label)
        for axis in (bleu_axis, loss_axis):
            axis.grid(alpha=0.3)
            axis.legend()
    axes[0][0].set_ylabel("BLEU (greedy)")
    axes[1][0].set_ylabel("loss per token")
    best = max(valid, key=lambda r: r["bleu"])
    figure.suptitle(f"{run.root.name}: best validation BLEU {best['bleu']:.2f} at step {best['step']}")
    figure.tight_layout()
    write_output(target, lambda file: save_png(figure, file, dpi=100))
    plt.close(figure)
    return target
