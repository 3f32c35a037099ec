"""What training tells the user, from rank 0 only: console lines, the progress bar,
logs/metrics.jsonl and logs/train.log, and train.json when training ends.

Every method is a no-op on the other ranks, so the training loop never asks which rank
it runs on before it reports something.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from lstmmt.console import stderr
from lstmmt.metrics_log import read_metrics
from lstmmt.rundir import RunDir, atomic_write_text


class TrainingOutput:
    def __init__(self, run: RunDir, enabled: bool):
        self.run, self.enabled = run, enabled
        self.progress = Progress(
            TextColumn("step {task.fields[step]}"), BarColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s  lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False, disable=not enabled,
        )
        self._task = self.progress.add_task("train", total=None, step=0, loss=float("nan"), tps=0.0, lr=0.0)

    def print(self, message: str, markup: bool = True) -> None:
        """A line above the progress bar (markup=False for text that holds user paths)."""
        if self.enabled:
            self.progress.console.print(message if markup else Text(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        if self.enabled:
            self.progress.console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)

    def update_bar(self, **fields: Any) -> None:
        """Move the bar: step, loss, tps, lr, and completed/total."""
        if self.enabled:
            self.progress.update(self._task, **fields)

    def record(self, event: str, step: int, elapsed: float, **values: Any) -> None:
        """One event as a JSON line in metrics.jsonl and a readable line in train.log."""
        if not self.enabled:
            return
        record = {"event": event, "step": step, "elapsed": round(elapsed, 2), **values}
        self.run.logs.mkdir(parents=True, exist_ok=True)
        with open(self.run.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        with open(self.run.train_log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}\n")

    def forget_after(self, step: int) -> None:
        """Drop metrics.jsonl records of steps a resumed run will redo, so each step appears once;
        a line torn by a kill mid-write is dropped too (lstmmt/metrics_log.py reads the file)."""
        if self.enabled and self.run.metrics.exists():
            kept = [record for record in read_metrics(self.run.metrics) if record.get("step", 0) <= step]
            atomic_write_text(self.run.metrics, "".join(json.dumps(record) + "\n" for record in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """RUN/train.json marks finished training (a file target for recipes); absent after an interruption."""
        if self.enabled:
            atomic_write_text(self.run.train_summary, json.dumps(summary, indent=2) + "\n")

    def __enter__(self) -> TrainingOutput:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)
