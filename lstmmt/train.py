"""The train step: one loop you can read in a sitting.

    resume (or start) -> for each token-budget batch: forward, label-smoothed loss,
    backward, clip, Adam step -> every `valid_every` steps: validation loss and greedy
    BLEU, best checkpoint, patience, last/step-N checkpoints -> stop on max steps,
    max time, patience or a signal (which saves first).

The order of batches is a pure function of (seed, epoch) and every RNG state is in the
checkpoint, so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lstmmt import checkpoint
from lstmmt.batching import Batch, collate, epoch_batches, token_batches
from lstmmt.config import Config, TrainConfig, parse_duration
from lstmmt.device import autocast, resolve_device
from lstmmt.encoded import EncodedSide
from lstmmt.errors import UserError
from lstmmt.model import count_parameters
from lstmmt.rundir import RunDir, atomic_write_text
from lstmmt.tokenizer import PAD, Tokenizer
from lstmmt.translate import SearchOptions, decode_corpus

console = Console(stderr=True, soft_wrap=True)
FAILED_STOPS = {"SIGINT": 130, "SIGTERM": 143, "non-finite loss": 1}
"""Ways training can end unfinished, with the exit status the CLI gives each."""
MAX_NONFINITE = 10
"""Consecutive skipped batches after which training stops: the model or the data is broken."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_bleu: float = -1.0
    bad_validations: int = 0
    lr_scale: float = 1.0  # plateau schedule's decay so far
    elapsed: float = 0.0  # training seconds over all sessions
    stopped: str = ""  # why the last session ended (informational; limits are checked afresh on resume)
    nonfinite_in_a_row: int = 0  # batches skipped for a non-finite loss since the last good one


def learning_rate(config: TrainConfig, step: int, lr_scale: float) -> float:
    """Linear warm-up to config.lr, then constant, 1/sqrt(step) decay, or the plateau scale."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "inverse_sqrt":
        return config.lr * math.sqrt(max(config.warmup_steps, 1) / (step + 1))
    if config.lr_schedule == "plateau":
        return max(config.lr * lr_scale, config.lr_min)
    return config.lr


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.received: Optional[str] = None

    def __enter__(self) -> "StopSignal":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LogWindow:
    """Loss and target tokens since the last log line; the loss stays on the device until read."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss += loss
        self.tokens += tokens

    def read_and_reset(self) -> tuple[float, float]:
        """(loss per target token, target tokens per second) over the window."""
        result = self.loss.item() / self.tokens, self.tokens / (time.perf_counter() - self.start)
        self.loss.zero_()
        self.tokens, self.start = 0, time.perf_counter()
        return result


class Trainer:
    def __init__(self, run: RunDir, config: Config, device: torch.device):
        self.run, self.config, self.device = run, config, device
        self.tokenizer = Tokenizer.load(run.tokenizer_dir)
        self.train_src = EncodedSide.open(run, "train", "src")
        self.train_tgt = EncodedSide.open(run, "train", "tgt")
        self.has_valid = run.has_split("valid")
        if self.has_valid:
            self.valid_src = EncodedSide.open(run, "valid", "src")
            self.valid_tgt = EncodedSide.open(run, "valid", "tgt")
            self.valid_refs = run.text("valid", "tgt").read_text(encoding="utf-8").splitlines()
        torch.manual_seed(config.train.seed)
        self.model = checkpoint.build_model(config, self.tokenizer).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr)
        self.state = TrainState()
        self.last_valid: dict[str, float] = {}
        self.metrics = run.logs / "metrics.jsonl"
        self.time_budget = parse_duration(config.train.max_time) if config.train.max_time else math.inf

    # -- checkpoints ---------------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "vocab": checkpoint.vocab_info(self.tokenizer),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
            "valid": dict(self.last_valid),
            "step": self.state.step,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def save(self, best: bool) -> None:
        payload = self.payload()
        checkpoint.save(checkpoint.step_path(self.run, self.state.step), payload)
        checkpoint.save(self.run.checkpoints / "last.pt", payload)
        if best:
            checkpoint.save(self.run.checkpoints / "best.pt", payload)
        checkpoint.prune(self.run, self.config.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint that reads back; False if there is none."""
        # step-N.pt is written before last.pt, so the newest step file is never older than last.pt.
        candidates = [*checkpoint.step_checkpoints(self.run), self.run.checkpoints / "last.pt"]
        for path in [p for p in candidates if p.exists()]:
            try:
                payload = checkpoint.load(path)
            except UserError as exc:
                console.print(f"[yellow]warning:[/] skipping {exc}")
                continue
            self._check_compatible(payload, path)
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.state = TrainState(**payload["state"])
            torch.set_rng_state(payload["rng"]["torch"])
            if payload["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
            console.print(f"Resuming from {path} (step {self.state.step}, epoch {self.state.epoch + 1})")
            self._forget_metrics_after(self.state.step)
            return True
        return False

    def _forget_metrics_after(self, step: int) -> None:
        """Drop metrics.jsonl records of steps the resumed run will redo, so each step appears once."""
        if self.metrics.exists():
            kept = [line for line in self.metrics.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_text(self.metrics, "".join(kept))

    def _check_compatible(self, payload: dict[str, Any], path: Any) -> None:
        saved_model = payload["config"]["model"]
        if saved_model != asdict(self.config.model):
            changed = sorted(k for k in saved_model if saved_model[k] != getattr(self.config.model, k))
            raise UserError(
                f"{path} was trained with different model settings ({', '.join('model.' + k for k in changed)}); "
                f"keep them, or pass --restart to train from scratch"
            )

    # -- the loop ------------------------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        """Training batches from the current position on, epoch after epoch."""
        cfg = self.config.train
        while self.state.epoch < cfg.max_epochs:
            order = epoch_batches(self.train_src.lengths, self.train_tgt.lengths, cfg.batch_tokens, cfg.seed, self.state.epoch)
            for indices in order[self.state.batch_in_epoch :]:
                self.state.batch_in_epoch += 1
                yield collate(indices, self.train_src, self.train_tgt)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step; returns the summed loss as a device tensor (no host sync)."""
        cfg = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.state.step, self.state.lr_scale)
        batch = batch.to(self.device)
        with autocast(self.device, cfg.precision):
            logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), batch.tgt_out.view(-1),
            ignore_index=PAD, label_smoothing=cfg.label_smoothing, reduction="sum",
        )
        self.optimizer.zero_grad(set_to_none=True)
        (loss / batch.tgt_tokens).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        if not torch.isfinite(grad_norm):  # one host sync per step: the price of never corrupting weights
            self.state.nonfinite_in_a_row += 1
            console.print(f"[yellow]warning:[/] non-finite loss or gradient at step {self.state.step + 1}; batch skipped")
            return torch.zeros((), device=self.device)
        self.state.nonfinite_in_a_row = 0
        self.optimizer.step()
        self.state.step += 1
        return loss.detach()

    def fit(self) -> TrainState:
        cfg = self.config.train
        self.state.nonfinite_in_a_row = 0  # a resumed run gets a fresh chance (e.g. with a lower lr)
        if reason := self._stop_reason():
            console.print(f"Nothing to train: {reason} already reached at step {self.state.step}. Raise it "
                          f"(e.g. --max-steps, --max-time, --set train.patience=...) to go on, or pass --restart.")
            self.state.stopped = reason
            self._write_summary()
            return self.state
        console.print(f"Model: {count_parameters(self.model):,} parameters on {self.device}; "
                      f"{len(self.train_src):,} training pairs")
        self.model.train()
        window = LogWindow(self.device)
        session_start, elapsed_before = time.perf_counter(), self.state.elapsed
        with StopSignal() as stop, self._progress() as progress:
            task = progress.add_task("train", total=None, step=self.state.step, loss=float("nan"), tps=0.0, lr=0.0)
            for batch in self.batches():
                window.add(self.train_step(batch), batch.tgt_tokens)
                self.state.elapsed = elapsed_before + time.perf_counter() - session_start
                reason = stop.received or self._stop_reason()
                if self.state.step % cfg.log_every == 0 or reason:
                    self._log_window(window, progress, task)
                progress.update(task, step=self.state.step, **self._progress_position())
                if stop.received:  # save at once, without validating: the user is waiting
                    self.state.stopped = stop.received
                    self.save(best=False)
                    break
                if self.state.step % cfg.valid_every == 0 or reason:
                    self.validate_and_save(progress)
                    reason = reason or self._stop_reason()
                if reason:
                    self.state.stopped = reason
                    self.save(best=False)
                    break
            else:
                self.state.stopped = "max_epochs"
                self.validate_and_save(progress)
                self.save(best=False)
        self._report_end(stop.received)
        if self.finished():
            self._write_summary()
        return self.state

    def finished(self) -> bool:
        """Training ended by one of its limits, not by a signal or a failure."""
        return self.state.stopped not in FAILED_STOPS

    def _write_summary(self) -> None:
        """RUN/train.json marks finished training (a file target for recipes); absent after an interruption."""
        summary = {"stopped": self.state.stopped, "step": self.state.step, "epoch": self.state.epoch + 1,
                   "best_valid_bleu": self.state.best_bleu if self.has_valid else None,
                   "training_seconds": round(self.state.elapsed, 1), "device": str(self.device)}
        atomic_write_text(self.run.train_summary, json.dumps(summary, indent=2) + "\n")

    def _log_window(self, window: "LogWindow", progress: Progress, task: Any) -> None:
        if not window.tokens:
            return
        loss, tokens_per_s = window.read_and_reset()
        lr = self.optimizer.param_groups[0]["lr"]
        self.log("train", loss=loss, lr=lr, tgt_tokens_per_s=tokens_per_s, epoch=self.state.epoch + 1)
        progress.update(task, loss=loss, tps=tokens_per_s, lr=lr)

    def _progress_position(self) -> dict[str, float]:
        """The bar follows the time budget when there is one, else the step limit."""
        if math.isfinite(self.time_budget):
            return {"completed": min(self.state.elapsed, self.time_budget), "total": self.time_budget}
        return {"completed": self.state.step, "total": self.config.train.max_steps}

    def _stop_reason(self) -> str:
        cfg = self.config.train
        if self.state.step >= cfg.max_steps:
            return "max_steps"
        if self.state.elapsed >= self.time_budget:
            return "max_time"
        if cfg.patience and self.state.bad_validations >= cfg.patience:
            return "patience"
        if self.state.nonfinite_in_a_row >= MAX_NONFINITE:
            return "non-finite loss"
        return ""

    def _report_end(self, signal_name: Optional[str]) -> None:
        if signal_name:
            console.print(f"Stopped by {signal_name} at step {self.state.step}; checkpoint saved. "
                          f"Run `lstmmt train {self.run.root}` to resume.")
        elif self.state.stopped == "non-finite loss":
            console.print(f"[red]Training stopped:[/] {MAX_NONFINITE} batches in a row gave a non-finite loss at step "
                          f"{self.state.step}. Lower train.lr, check the data, or try precision fp32; the last good "
                          f"weights are in {self.run.checkpoints / 'last.pt'}.")
        else:
            best = f"best validation BLEU {self.state.best_bleu:.2f}" if self.has_valid else "no validation set"
            console.print(f"Training finished ({self.state.stopped}) at step {self.state.step}; {best}.")

    def validate_and_save(self, progress: Progress) -> None:
        if not self.has_valid:
            self.save(best=True)
            return
        result = self.last_valid = self.validate()
        improved = result["bleu"] > self.state.best_bleu
        if improved:
            self.state.best_bleu, self.state.bad_validations = result["bleu"], 0
        else:
            self.state.bad_validations += 1
            if self.config.train.lr_schedule == "plateau" and self.state.step > self.config.train.warmup_steps:
                self.state.lr_scale *= self.config.train.lr_decay_factor
        self.log("valid", **result, best_bleu=self.state.best_bleu)
        progress.console.print(
            f"step {self.state.step:>7}  valid loss {result['loss']:.3f}  ppl {result['ppl']:.2f}  "
            f"BLEU {result['bleu']:.2f}" + ("  [green]new best[/]" if improved else f"  (best {self.state.best_bleu:.2f})")
        )
        self.save(best=improved)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Validation loss/perplexity (teacher forcing) and BLEU of greedy translations."""
        self.model.eval()
        total_loss, total_tokens = torch.zeros((), device=self.device), 0
        lengths = np.maximum(self.valid_src.lengths, self.valid_tgt.lengths) + 1
        for indices in token_batches(np.argsort(lengths, kind="stable"), lengths, self.config.train.batch_tokens):
            batch = collate(indices, self.valid_src, self.valid_tgt).to(self.device)
            with autocast(self.device, self.config.train.precision):
                logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
            total_loss += F.cross_entropy(logits.float().view(-1, logits.size(-1)), batch.tgt_out.view(-1), ignore_index=PAD, reduction="sum")
            total_tokens += batch.tgt_tokens
        options = SearchOptions.from_config(self.config.decode, beam_size=1)
        with autocast(self.device, self.config.train.precision):
            hyps = decode_corpus(self.model, [self.valid_src[i] for i in range(len(self.valid_src))], options, self.device)
        texts = self.tokenizer.decode_tgt([h[0].tokens for h in hyps])
        self.model.train()
        loss = total_loss.item() / max(total_tokens, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50)), "bleu": sacrebleu.corpus_bleu(texts, [self.valid_refs]).score}

    # -- output --------------------------------------------------------------------------

    def log(self, event: str, **values: Any) -> None:
        record = {"event": event, "step": self.state.step, "elapsed": round(self.state.elapsed, 2), **values}
        self.run.logs.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        with open(self.run.logs / "train.log", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}\n")

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("step {task.fields[step]}"), BarColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s  lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )


def train(run: RunDir, config: Config, restart: bool = False) -> TrainState:
    """Train (or resume training) the model of a preprocessed run directory."""
    run.require_preprocessed()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    trainer = Trainer(run, config, resolve_device(config.train.device))
    run.train_summary.unlink(missing_ok=True)  # training (again): not finished until it says so
    if restart:
        for old in [*run.checkpoints.glob("*.pt"), run.logs / "metrics.jsonl", run.logs / "train.log"]:
            old.unlink(missing_ok=True)
    elif not trainer.resume() and any(run.checkpoints.glob("*.pt")):
        raise UserError(f"no checkpoint in {run.checkpoints} could be read; pass --restart to train from scratch")
    config.save(run.config)
    return trainer.fit()
