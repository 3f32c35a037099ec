"""The train step: one loop you can read in a sitting.

    resume (or start) -> for each token-budget batch: forward, label-smoothed loss,
    backward, clip, Adam step -> every `valid_every` steps: validation loss and greedy
    BLEU, best checkpoint, patience, last/step-N checkpoints -> stop on max steps,
    max time, patience or a signal (which saves first).

The order of batches is a pure function of (seed, epoch) and every RNG state is in the
checkpoint, so a resumed run continues exactly where the interrupted one was. Under
torchrun the same loop runs on every rank, each on its shard of every batch (see
lstmmt/distributed.py); rank 0 validates, logs and saves.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Optional

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from torch.nn.parallel import DistributedDataParallel

from lstmmt import checkpoint, distributed
from lstmmt.batching import Batch, collate, epoch_batches, token_batches
from lstmmt.config import Config, TrainConfig, parse_duration
from lstmmt.device import autocast, choose_precision
from lstmmt.distributed import Ranks, any_rank, from_main, shard, sum_over_ranks
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

    def __init__(self, device: torch.device, ranks: Ranks):
        self.loss = torch.zeros((), device=device)
        self.tokens, self.start = 0, time.perf_counter()
        self.device, self.ranks = device, ranks

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss += loss
        self.tokens += tokens

    def read_and_reset(self) -> Optional[tuple[float, float]]:
        """(loss per target token, target tokens per second) over the window and all ranks; None if empty."""
        loss, tokens = sum_over_ranks([self.loss.item(), self.tokens], self.ranks, self.device)
        seconds = time.perf_counter() - self.start
        self.loss.zero_()
        self.tokens, self.start = 0, time.perf_counter()
        return (loss / tokens, tokens / seconds) if tokens else None


class Trainer:
    def __init__(self, run: RunDir, config: Config, device: torch.device, ranks: Ranks = Ranks()):
        self.run, self.config, self.device, self.ranks = run, config, device, ranks
        self.tokenizer = Tokenizer.load(run.tokenizer_dir)
        self.train_src = EncodedSide.open(run, "train", "src")
        self.train_tgt = EncodedSide.open(run, "train", "tgt")
        self.has_valid = run.has_split("valid")
        if self.has_valid:
            self.valid_src = EncodedSide.open(run, "valid", "src").all()
            self.valid_tgt = EncodedSide.open(run, "valid", "tgt").all()
            self.valid_refs = run.text("valid", "tgt").read_text(encoding="utf-8").splitlines()
        torch.manual_seed(config.train.seed)  # the same initial weights on every rank
        self.model = checkpoint.build_model(config, self.tokenizer).to(device)
        self._seed_rank(0)
        # What the training step runs: the model itself, or a DDP wrapper that all-reduces its gradients.
        self.replica: torch.nn.Module = self.model
        if ranks.distributed:
            self.replica = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        # fused: one kernel per step for all parameters instead of a dozen small ops per tensor.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr, fused=True)
        self.state = TrainState()
        self.last_valid: dict[str, float] = {}
        self.metrics = run.logs / "metrics.jsonl"
        self.time_budget = parse_duration(config.train.max_time) if config.train.max_time else math.inf
        self.precision = choose_precision(config.train.precision, device, "train.precision", training=True)

    def _seed_rank(self, step: int) -> None:
        """Ranks other than 0 draw their own dropout masks, from a seed of (seed, rank, step)."""
        if self.ranks.rank:
            torch.manual_seed(int(np.random.SeedSequence([self.config.train.seed, self.ranks.rank, step]).generate_state(1)[0]))

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
        if not self.ranks.is_main:
            return
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
            self._seed_rank(self.state.step)  # checkpoints hold rank 0's RNG state only
            if self.ranks.is_main:
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

    def batches(self) -> Iterator[tuple[Batch, float]]:
        """This rank's part of each training batch from the current position on, epoch after epoch,
        with the weight that turns its summed loss into its share of the whole batch's mean loss."""
        cfg = self.config.train
        while self.state.epoch < cfg.max_epochs:
            batches = epoch_batches(self.train_src, self.train_tgt, cfg.batch_tokens, cfg.window_sentences, cfg.seed, self.state.epoch)
            for src, tgt, indices in itertools.islice(batches, self.state.batch_in_epoch, None):  # a resumed run skips ahead
                self.state.batch_in_epoch += 1
                batch_tokens = int(tgt.lengths[indices].sum()) + len(indices)  # + EOS each
                # DDP averages gradients over ranks, hence world / tokens rather than 1 / tokens.
                mine, weight = shard(indices, self.ranks), self.ranks.world / batch_tokens
                if len(mine) == 0:  # fewer sentences than ranks: join the all-reduce with zero weight
                    mine, weight = indices[:1], 0.0
                yield collate(mine, src, tgt), weight
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def train_step(self, batch: Batch, weight: float) -> torch.Tensor:
        """One optimizer step on loss x weight (see `batches`); returns the summed loss as a
        device tensor (no host sync)."""
        cfg = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.state.step, self.state.lr_scale)
        batch = batch.to(self.device)
        with autocast(self.device, self.precision.name):
            logits = self.replica(batch.src, batch.src_lengths, batch.tgt_in)
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), batch.tgt_out.view(-1),
            ignore_index=PAD, label_smoothing=cfg.label_smoothing, reduction="sum",
        )
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        # One host sync per step: the price of never corrupting weights. Gradients are all-reduced
        # by now, so every rank sees the same norm and skips the same batches.
        if not torch.isfinite(grad_norm):
            self.state.nonfinite_in_a_row += 1
            if self.ranks.is_main:
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
            self._print(f"Nothing to train: {reason} already reached at step {self.state.step}. Raise it "
                        f"(e.g. --max-steps, --max-time, --set train.patience=...) to go on, or pass --restart.")
            self.state.stopped = reason
            self._write_summary()
            return self.state
        ranks = f" x {self.ranks.world} ranks" if self.ranks.distributed else ""
        self._print(f"Model: {count_parameters(self.model):,} parameters on {self.device}{ranks}, precision "
                    f"{self.precision}; {len(self.train_src):,} training pairs")
        self.model.train()
        window = LogWindow(self.device, self.ranks)
        session_start, elapsed_before = time.perf_counter(), self.state.elapsed
        signal_name: Optional[str] = None
        with StopSignal() as stop, self._progress() as progress:
            task = progress.add_task("train", total=None, step=self.state.step, loss=float("nan"), tps=0.0, lr=0.0)
            for batch, weight in self.batches():
                loss = self.train_step(batch, weight)
                if weight:
                    window.add(loss, batch.tgt_tokens)
                self.state.elapsed = elapsed_before + time.perf_counter() - session_start
                signal_name, reason = self._agreed_stop(stop)
                reason = signal_name or reason
                if self.state.step % cfg.log_every == 0 or reason:
                    self._log_window(window, progress, task)
                progress.update(task, step=self.state.step, **self._progress_position())
                if signal_name:  # save at once, without validating: the user is waiting
                    self.state.stopped = signal_name
                    self.save(best=False)
                    break
                if self.state.step % cfg.valid_every == 0 or reason:
                    self.validate_and_save(progress)
                    reason = reason or self._stop_reason()  # patience: the same on all ranks after validation
                if reason:
                    self.state.stopped = reason
                    self.save(best=False)
                    break
            else:
                self.state.stopped = "max_epochs"
                self.validate_and_save(progress)
                self.save(best=False)
        self._report_end(signal_name if self.state.stopped in FAILED_STOPS else None)
        if self.finished():
            self._write_summary()
        return self.state

    def finished(self) -> bool:
        """Training ended by one of its limits, not by a signal or a failure."""
        return self.state.stopped not in FAILED_STOPS

    def _agreed_stop(self, stop: StopSignal) -> tuple[Optional[str], str]:
        """(signal received, limit reached) as every rank sees them, so all ranks leave the loop together.

        Each rank measures its own time, and a signal may reach one rank a step before another.
        """
        signal_name, reason = stop.received, self._stop_reason()
        if self.ranks.distributed:
            signalled, out_of_time = any_rank([signal_name is not None, reason == "max_time"], self.ranks, self.device)
            if signalled:
                signal_name = signal_name or "SIGTERM"
            if out_of_time:
                reason = reason or "max_time"
        return signal_name, reason

    def _print(self, message: str) -> None:
        if self.ranks.is_main:
            console.print(message)

    def _write_summary(self) -> None:
        """RUN/train.json marks finished training (a file target for recipes); absent after an interruption."""
        if not self.ranks.is_main:
            return
        summary = {"stopped": self.state.stopped, "step": self.state.step, "epoch": self.state.epoch + 1,
                   "best_valid_bleu": self.state.best_bleu if self.has_valid else None,
                   "training_seconds": round(self.state.elapsed, 1), "device": str(self.device)}
        atomic_write_text(self.run.train_summary, json.dumps(summary, indent=2) + "\n")

    def _log_window(self, window: "LogWindow", progress: Progress, task: Any) -> None:
        result = window.read_and_reset()
        if result is None:
            return
        loss, tokens_per_s = result
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
        if not self.ranks.is_main:
            return
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
        """Rank 0 validates, updates best/patience/plateau state and saves; the other ranks wait and
        take its state, so they decay the learning rate and stop exactly when it does."""
        if not self.has_valid:
            self.save(best=True)
            return
        if self.ranks.is_main:
            self._validate_on_main(progress)
        self.state, self.last_valid = from_main((self.state, self.last_valid), self.ranks)

    def _validate_on_main(self, progress: Progress) -> None:
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
            with autocast(self.device, self.precision.name):
                logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
            total_loss += F.cross_entropy(logits.float().view(-1, logits.size(-1)), batch.tgt_out.view(-1), ignore_index=PAD, reduction="sum")
            total_tokens += batch.tgt_tokens
        # Greedy search in the training precision (decode_corpus applies it), as documented.
        options = replace(SearchOptions.from_config(self.config.decode, beam_size=1), precision=self.precision.name)
        hyps = decode_corpus(self.model, [self.valid_src[i] for i in range(len(self.valid_src))], options, self.device)
        texts = self.tokenizer.decode_tgt([h[0].tokens for h in hyps])
        self.model.train()
        loss = total_loss.item() / max(total_tokens, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50)), "bleu": sacrebleu.corpus_bleu(texts, [self.valid_refs]).score}

    # -- output --------------------------------------------------------------------------

    def log(self, event: str, **values: Any) -> None:
        if not self.ranks.is_main:
            return
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
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False, disable=not self.ranks.is_main,
        )


def train(run: RunDir, config: Config, restart: bool = False) -> TrainState:
    """Train (or resume training) the model of a preprocessed run directory; under torchrun, one rank of it."""
    run.require_preprocessed()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    ranks, device = distributed.setup(config.train.device)
    try:
        trainer = Trainer(run, config, device, ranks)
        if ranks.is_main:
            run.train_summary.unlink(missing_ok=True)  # training (again): not finished until it says so
        if restart:
            if ranks.is_main:
                for old in [*run.checkpoints.glob("*.pt"), run.logs / "metrics.jsonl", run.logs / "train.log"]:
                    old.unlink(missing_ok=True)
        elif not trainer.resume() and any(run.checkpoints.glob("*.pt")):
            raise UserError(f"no checkpoint in {run.checkpoints} could be read; pass --restart to train from scratch")
        if ranks.is_main:
            config.save(run.config)
        return trainer.fit()
    finally:
        distributed.teardown()
