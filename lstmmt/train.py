"""The train step: one loop you can read in a sitting.

    resume (or start, perhaps from a parent's weights), then for each optimizer step:
      train   for each of its train.accumulate token-budget batches: forward, label-smoothed
              loss, backward (gradients add up); then clip, Adam step
      events  a stop signal, max_time spent, a log line or a validation due (agreed by all ranks)
      act     in this order: log -> validate (best, patience, plateau) -> save -> stop

`stop_reason` is the one place that decides why training stops: a signal (which saves at
once, without validating: the user waits), max_steps, max_time, non-finite losses, every
epoch of max_epochs trained, or patience; every stop but a signal validates before it saves.

The order of batches is a pure function of (seed, epoch) and every RNG state is in the
checkpoint, which is written only between optimizer steps, so a resumed run continues exactly
where the interrupted one was. Under torchrun the same loop runs on every rank, each on its
shard of every batch (see lstmmt/distributed.py); rank 0 validates, logs and saves
(lstmmt/trainlog.py).
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from lstmmt import checkpoint, distributed
from lstmmt.batching import Batch, collate, epoch_batches, epoch_variant, prefetched
from lstmmt.checkpoint import Parent, describe_vocab
from lstmmt.config import Config, TrainConfig
from lstmmt.device import choose_precision, default_batch_tokens, hardware, prepare_device
from lstmmt.distributed import Ranks, any_rank, from_main, shard, sum_over_ranks
from lstmmt.encoded import EncodedSide
from lstmmt.errors import UserError
from lstmmt.model import Seq2Seq, count_parameters
from lstmmt.rundir import RunDir, sampled_split
from lstmmt.schedule import learning_rate
from lstmmt.tokenizer import Tokenizer
from lstmmt.trainlog import TrainingOutput
from lstmmt.validation import Validation, token_loss

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that save a checkpoint and stop training: Ctrl-C, kill, a closed terminal or ssh session."""
FAILED_STOPS = {**{sig.name: 128 + sig for sig in STOP_SIGNALS}, "non-finite loss": 1}
"""Ways training can end unfinished, with the exit status the CLI gives each."""
MAX_NONFINITE = 10
"""Consecutive skipped optimizer steps after which training stops: the model or the data is broken."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken, including any skipped for a non-finite gradient
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_bleu: float = -1.0
    bad_validations: int = 0
    lr_scale: float = 1.0  # plateau schedule's decay so far
    elapsed: float = 0.0  # training seconds over all sessions
    stopped: str = ""  # why the last session ended (informational; limits are checked afresh on resume)
    nonfinite_in_a_row: int = 0  # steps skipped for a non-finite gradient since the last good one
    last_valid_elapsed: float = 0.0  # `elapsed` at the last validation (for train.valid_every_time)


@dataclass(frozen=True)
class Events:
    """What a training step brought about, the same on every rank; the loop acts on these alone."""

    signal: str | None = None  # the name of a stop signal that reached any rank
    out_of_time: bool = False  # train.max_time is spent (on any rank)
    epochs_done: bool = False  # no batch is left: every epoch of train.max_epochs is trained
    log_due: bool = False  # a log line: every train.log_every steps, and before stopping
    valid_due: bool = False  # a validation: every train.valid_every steps or train.valid_every_time


def stop_reason(state: TrainState, config: TrainConfig, events: Events) -> str:
    """Why training stops now, or "" to go on: the one place that decides it. When several
    reasons hold, the first below wins. Non-finite losses are counted when a log line reads
    them, and patience changes only when a validation does."""
    if events.signal:
        return events.signal
    if config.max_steps is not None and state.step >= config.max_steps:
        return "max_steps"
    if events.out_of_time:
        return "max_time"
    if state.nonfinite_in_a_row >= MAX_NONFINITE:
        return "non-finite loss"
    if events.epochs_done:
        return "max_epochs"
    if config.patience and state.bad_validations >= config.patience:
        return "patience"
    return ""


def judge_validation(state: TrainState, bleu: float, config: TrainConfig) -> bool:
    """Early-stopping bookkeeping after a validation: a better BLEU is the new best and resets
    patience; any other counts against patience and, with the plateau schedule after warm-up,
    decays the learning rate. Returns whether the model is the best so far."""
    if bleu > state.best_bleu:
        state.best_bleu, state.bad_validations = bleu, 0
        return True
    state.bad_validations += 1
    if config.schedule == "plateau" and state.step > config.warmup_steps:
        state.lr_scale *= config.lr_decay_factor
    return False


class StopSignal:
    """Turns the first of the STOP_SIGNALS into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.received: str | None = None

    def __enter__(self) -> StopSignal:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LogWindow:
    """Loss, target tokens and skipped batches since the last log line. The loss, the skip
    count and the run of consecutive skips stay on the device until read, so a training
    step never waits for the GPU."""

    def __init__(self, device: torch.device, ranks: Ranks):
        self.device, self.ranks = device, ranks
        self.loss = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.in_a_row = torch.zeros((), device=device)
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: int, found_inf: torch.Tensor) -> None:
        """Count a step; found_inf is 1.0 when its gradient was not finite (the update was skipped)."""
        self.loss += loss * (1 - found_inf)
        self.tokens += tokens
        self.skipped += found_inf
        self.in_a_row.mul_(found_inf).add_(found_inf)

    def read_and_reset(self) -> tuple[tuple[float, float] | None, int, int]:
        """((loss per target token, target tokens/s) over the window and all ranks, or None if
        empty), batches skipped in the window, and consecutive skips up to now."""
        skipped, in_a_row = int(self.skipped.item()), int(self.in_a_row.item())
        loss, tokens = sum_over_ranks([self.loss.item(), self.tokens], self.ranks, self.device)
        seconds = time.perf_counter() - self.start
        self.loss.zero_()
        self.skipped.zero_()
        self.tokens, self.start = 0, time.perf_counter()
        return ((loss / tokens, tokens / seconds) if tokens else None), skipped, in_a_row


def optimizer_steps(
    batches: Iterable[tuple[Batch, float, tuple[int, int] | None]],
) -> Iterator[tuple[list[tuple[Batch, float]], tuple[int, int]]]:
    """The items of `Trainer.batches` grouped into optimizer steps: each step's (batch, weight)
    pairs, and the position after it that its last batch carries."""
    parts: list[tuple[Batch, float]] = []
    for batch, weight, position in batches:
        parts.append((batch, weight))
        if position is not None:
            yield parts, position
            parts = []


class Trainer:
    """The training of one run directory on one device (one rank under torchrun): the model, its
    optimizer and TrainState, the loop (`fit`), and the checkpoints that let it resume exactly."""

    def __init__(self, run: RunDir, config: Config, device: torch.device, ranks: Ranks = Ranks()):
        if config.train.batch_tokens is None:  # the device's choice, recorded in config.yaml by train()
            batch_tokens = default_batch_tokens(device, training=True)
            config = replace(config, train=replace(config.train, batch_tokens=batch_tokens))
        self.run, self.config, self.device, self.ranks = run, config, device, ranks
        prepare_device(device)
        self.precision = choose_precision(config.train.precision, device, "train.precision", training=True)
        self.tokenizer = Tokenizer.load(run.tokenizer_dir)
        # The training data in each segmentation: the usual one, then any sampled ones (epoch_variant picks).
        variants = run.read_meta()["tokenizer"].get("sampled_variants", 0)
        self.train_data = [(EncodedSide.open(run, split, "src"), EncodedSide.open(run, split, "tgt"))
                           for split in ["train", *(sampled_split(k) for k in range(1, variants + 1))]]
        self.validation: Validation | None = None  # None: the run has no validation split
        if run.has_split("valid"):
            self.validation = Validation.open(run, self.tokenizer, config, device, self.precision)
        torch.manual_seed(config.train.seed)  # the same initial weights on every rank
        self.model: Seq2Seq = checkpoint.build_model(config, self.tokenizer).to(device)
        self._seed_rank(0)
        # What the training step runs: the model itself, or a DDP wrapper that all-reduces its gradients.
        self.replica: torch.nn.Module = self.model
        if ranks.distributed:
            self.replica = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        # fused: one kernel per step for all parameters; it also skips the update on device when
        # `found_inf` is set (see train_step), as it does for PyTorch's GradScaler.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr, fused=True)
        self.state = TrainState()
        self.init_from: dict[str, str] | None = None  # Parent.record of the weights the run started from
        self.last_valid: dict[str, float] = {}
        if config.train.schedule == "budget" and not config.train.bounded:
            raise UserError("train.lr_schedule=budget decays over a budget: give training one with --max-time or "
                            "--max-steps, or choose another train.lr_schedule")
        self.time_budget = config.train.max_time_seconds
        self.valid_interval = config.train.valid_every_seconds
        self.out = TrainingOutput(run, enabled=ranks.is_main)

    def _seed_rank(self, step: int) -> None:
        """Ranks other than 0 draw their own dropout masks, from a seed of (seed, rank, step)."""
        if self.ranks.rank:
            seed = np.random.SeedSequence([self.config.train.seed, self.ranks.rank, step]).generate_state(1)[0]
            torch.manual_seed(int(seed))

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainState:
        """Train from the current state until `stop_reason` gives a reason; returns the final state."""
        self.state.nonfinite_in_a_row = 0  # a resumed run gets a fresh chance (e.g. with a lower lr)
        if reason := stop_reason(self.state, self.config.train, Events(out_of_time=self._out_of_time())):
            return self._nothing_to_train(reason)
        self._announce()
        self.model.train()
        window = LogWindow(self.device, self.ranks)
        session_start, elapsed_before = time.perf_counter(), self.state.elapsed
        with StopSignal() as stop, self.out:
            for parts, position in optimizer_steps(prefetched(self.batches(), self.device)):
                self.state.epoch, self.state.batch_in_epoch = position
                loss, found_inf = self.optimizer_step(parts)
                window.add(loss, sum(batch.tgt_tokens for batch, weight in parts if weight), found_inf)
                self.state.elapsed = elapsed_before + time.perf_counter() - session_start
                self.out.update_bar(step=self.state.step, **self._progress_position())
                if reason := self._act(self._events(stop), window):
                    break
            else:  # the batches ran out: every epoch is trained
                self.state.epoch, self.state.batch_in_epoch = self.config.train.max_epochs, 0
                reason = self._act(Events(epochs_done=True, valid_due=True), window)
        self.state.stopped = reason
        self._report_end()
        if self.finished():
            self._write_summary()
        return self.state

    def batches(self) -> Iterator[tuple[Batch, float, tuple[int, int] | None]]:
        """This rank's part of each training batch from the current position on, epoch after
        epoch, with the weight that turns its summed loss into its share of its optimizer step's
        mean loss. A step is train.accumulate batches (fewer at the end of an epoch); its last
        batch carries the (epoch, batch_in_epoch) position after the step, the others None, as a
        run resumes only between steps. The position travels with the batch because a
        prefetching reader runs ahead of training."""
        cfg = self.config.train
        for epoch in range(self.state.epoch, cfg.max_epochs):
            done = self.state.batch_in_epoch if epoch == self.state.epoch else 0
            src, tgt = self.train_data[epoch_variant(len(self.train_data) - 1, cfg.seed, epoch)]
            batches = epoch_batches(src, tgt, cfg.batch_tokens, cfg.window_sentences, cfg.seed, epoch)
            numbered = enumerate(itertools.islice(batches, done, None), start=done + 1)
            while step := list(itertools.islice(numbered, cfg.accumulate)):
                step_tokens = sum(int(tgt.lengths[i].sum()) + len(i) for _, (_, tgt, i) in step)  # + EOS each
                for number, (src, tgt, indices) in step:
                    # DDP averages gradients over ranks, hence world / tokens rather than 1 / tokens.
                    mine, weight = shard(indices, self.ranks), self.ranks.world / step_tokens
                    if len(mine) == 0:  # fewer sentences than ranks: join the all-reduce with zero weight
                        mine, weight = indices[:1], 0.0
                    yield collate(mine, src, tgt), weight, (epoch, number) if number == step[-1][0] else None

    def train_step(self, batch: Batch, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on one batch: `optimizer_step` of it alone."""
        return self.optimizer_step([(batch, weight)])

    def optimizer_step(self, parts: Sequence[tuple[Batch, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the summed gradients of loss x weight over a step's batches (see
        `batches`); returns the summed loss and found_inf (1.0 if the gradient was not finite and
        the update was skipped), both device tensors: no host sync. Under DDP the last batch's
        backward all-reduces the sum, so every rank skips alike."""
        cfg = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.state.step, self.state.lr_scale, self.state.elapsed)
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self._backward(batch, weight, last=number == len(parts))
                  for number, (batch, weight) in enumerate(parts, start=1)]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        found_inf = (~torch.isfinite(grad_norm)).float()
        self.optimizer.found_inf = found_inf
        self.optimizer.step()
        self.state.step += 1
        return sum(losses[1:], start=losses[0]), found_inf

    def _backward(self, batch: Batch, weight: float, last: bool) -> torch.Tensor:
        """Add the gradient of the batch's loss x weight to the parameters' gradients; the summed
        loss. Under DDP only the `last` batch of a step all-reduces: the others run under no_sync."""
        with nullcontext() if last or not self.ranks.distributed else self.replica.no_sync():
            loss = token_loss(self.replica, batch.to(self.device), self.precision.name,
                              self.config.train.label_smoothing)
            (loss * weight).backward()
        return loss.detach()

    def _events(self, stop: StopSignal) -> Events:
        """This step's events as every rank sees them (one all-reduce under DDP), so that all
        ranks log, validate, save and stop together: each rank measures its own time, and a
        signal may reach one rank a step before another."""
        cfg, state = self.config.train, self.state
        signal_name, out_of_time = stop.received, self._out_of_time()
        valid_time_due = state.elapsed - state.last_valid_elapsed >= self.valid_interval
        if self.ranks.distributed:
            signalled, out_of_time, valid_time_due = any_rank([signal_name is not None, out_of_time, valid_time_due],
                                                              self.ranks, self.device)
            signal_name = signal_name or ("SIGTERM" if signalled else None)
        stopping = stop_reason(state, cfg, Events(signal_name, out_of_time))
        return Events(signal_name, out_of_time, log_due=state.step % cfg.log_every == 0 or bool(stopping),
                      valid_due=state.step % cfg.valid_every == 0 or valid_time_due)

    def _act(self, events: Events, window: LogWindow) -> str:
        """Act on a step's events in a fixed order: log, validate, save. Returns why training
        stops, or "". A signal saves at once without validating (the user waits); every other
        stop validates first, so that the final checkpoint is judged like the others."""
        cfg = self.config.train
        if events.log_due:
            self._log_window(window)  # reads how many steps in a row had a non-finite gradient
        validate = not events.signal and (events.valid_due or bool(stop_reason(self.state, cfg, events)))
        improved = validate and self.validate_and_record()
        reason = stop_reason(self.state, cfg, events)  # patience may have run out
        if validate or reason:
            self.save(best=improved)
        return reason

    def _out_of_time(self) -> bool:
        """Whether this rank has spent train.max_time (training time of all sessions)."""
        return self.state.elapsed >= self.time_budget

    def finished(self) -> bool:
        """Training ended by one of its limits, not by a signal or a failure."""
        return self.state.stopped not in FAILED_STOPS

    # -- validation ----------------------------------------------------------------------

    def validate_and_record(self) -> bool:
        """Rank 0 validates and updates best/patience/plateau state; the other ranks take its
        state, so they decay the learning rate and stop exactly when it does. Returns whether
        this is the best model so far (a run without a validation set always is)."""
        self.state.last_valid_elapsed = self.state.elapsed
        if self.validation is None:
            return True
        improved = self._validate_on_main(self.validation) if self.ranks.is_main else False  # rank 0 sends its own
        self.state, self.last_valid, improved = from_main((self.state, self.last_valid, improved), self.ranks)
        return improved

    def _validate_on_main(self, validation: Validation) -> bool:
        start = time.perf_counter()
        result = self.last_valid = validation.scores(self.model)
        self.model.train()
        result["seconds"] = round(time.perf_counter() - start, 2)  # what validating costs, in metrics.jsonl
        improved = judge_validation(self.state, result["bleu"], self.config.train)
        self.out.record("valid", self.state.step, self.state.elapsed, **result, best_bleu=self.state.best_bleu)
        verdict = "  [green]new best[/]" if improved else f"  (best {self.state.best_bleu:.2f})"
        self.out.print(f"step {self.state.step:>7}  valid loss {result['loss']:.3f}  ppl {result['ppl']:.2f}  "
                       f"BLEU {result['bleu']:.2f}{verdict}  ({result['seconds']:.0f} s)")
        return improved

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, best: bool) -> None:
        if self.ranks.is_main:
            payload = {
                "config": self.config.to_dict(), "vocab": checkpoint.vocab_info(self.tokenizer),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state), "valid": dict(self.last_valid), "step": self.state.step,
                "rng": checkpoint.rng_state(self.device), "init_from": self.init_from,
            }
            checkpoint.save_training(self.run, payload, best, self.config.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint that reads back; False if there is none."""
        for path in checkpoint.resume_candidates(self.run):
            try:
                payload = checkpoint.load_training(path)
            except UserError as exc:
                self.out.warn(f"skipping {exc}")
                continue
            self._check_compatible(payload, path)
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.state = TrainState(**payload["state"])
            self.init_from = payload.get("init_from")
            checkpoint.restore_rng(payload["rng"], self.device)
            self._seed_rank(self.state.step)  # checkpoints hold rank 0's RNG state only
            self.out.print(f"Resuming from {path} (step {self.state.step}, epoch {self.state.epoch + 1})", markup=False)
            self.out.forget_after(self.state.step)
            best = self.run.checkpoint("best")
            if self.state.best_bleu >= 0 and not checkpoint.is_training_checkpoint(best):
                self.out.warn(f"{best} is missing or damaged: the next validation writes it again")
                self.state.best_bleu = -1.0  # else only a better score than the lost one would replace it
            return True
        return False

    def start_from(self, parent: Parent) -> None:
        """Start from the parent's weights (checked to fit by Parent.check_child), with this run's
        fresh optimizer, schedule and state."""
        self.model.load_state_dict(parent.weights)
        self.init_from = parent.record()
        self.out.print(f"Starting from the weights of {parent.path} (sha256 {parent.sha256[:12]})", markup=False)

    def _check_compatible(self, payload: dict[str, Any], path: Any) -> None:
        """Refuse, in one line, a checkpoint whose weights cannot fit this run's model: another
        vocabulary (preprocess --force since) or other model settings."""
        saved_vocab, vocab = payload.get("vocab"), checkpoint.vocab_info(self.tokenizer)
        if saved_vocab != vocab:
            raise UserError(
                f"{path} was trained with {describe_vocab(saved_vocab)}, but the run's tokenizer now has "
                f"{describe_vocab(vocab)}: pass --restart to train from scratch with this tokenizer, or preprocess "
                "again with the tokenizer settings the checkpoint was trained with to continue it"
            )
        saved_model = payload["config"]["model"]
        if saved_model != asdict(self.config.model):
            changed = sorted(k for k in saved_model if saved_model[k] != getattr(self.config.model, k))
            raise UserError(
                f"{path} was trained with different model settings ({', '.join('model.' + k for k in changed)}); "
                f"keep them, or pass --restart to train from scratch"
            )

    # -- what the user sees --------------------------------------------------------------

    def _announce(self) -> None:
        ranks = f" x {self.ranks.world} ranks" if self.ranks.distributed else ""
        self.out.print(f"Model: {count_parameters(self.model):,} parameters on {self.device}{ranks}, precision "
                       f"{self.precision}; {len(self.train_data[0][0]):,} training pairs, "
                       f"{self.config.train.batch_tokens:,}-token batches")

    def _nothing_to_train(self, reason: str) -> TrainState:
        self.out.print(f"Nothing to train: {reason} already reached at step {self.state.step}. Raise it "
                       f"(e.g. --max-steps, --max-time, --set train.patience=...) to go on, or pass --restart.")
        self.state.stopped = reason
        self._write_summary()
        return self.state

    def _log_window(self, window: LogWindow) -> None:
        result, skipped, self.state.nonfinite_in_a_row = window.read_and_reset()
        if skipped:
            self.out.warn(f"{skipped} step(s) up to step {self.state.step} gave a non-finite loss or gradient; "
                          "their updates were skipped (batch skipped)")
        if result is None:
            return
        loss, tokens_per_s = result
        lr = self.optimizer.param_groups[0]["lr"]
        self.out.record("train", self.state.step, self.state.elapsed, loss=loss, lr=lr, tgt_tokens_per_s=tokens_per_s,
                        epoch=self.state.epoch + 1)
        self.out.update_bar(loss=loss, tps=tokens_per_s, lr=lr)

    def _progress_position(self) -> dict[str, float]:
        """The bar follows the time budget when there is one, else the step limit, else counts steps."""
        if math.isfinite(self.time_budget):
            return {"completed": min(self.state.elapsed, self.time_budget), "total": self.time_budget}
        return {"completed": self.state.step, "total": self.config.train.max_steps}

    def _write_summary(self) -> None:
        self.out.write_summary({
            "stopped": self.state.stopped, "step": self.state.step, "epoch": self.state.epoch + 1,
            "best_valid_bleu": self.state.best_bleu if self.validation is not None else None,
            "training_seconds": round(self.state.elapsed, 1), "device": str(self.device),
            "precision": self.precision.name,
            "hardware": hardware(self.device) + (f" x {self.ranks.world} ranks" if self.ranks.distributed else ""),
            **({"init_from": self.init_from} if self.init_from else {}),
        })

    def _report_end(self) -> None:
        stopped = self.state.stopped
        if stopped in {sig.name for sig in STOP_SIGNALS}:
            self.out.print(f"Stopped by {stopped} at step {self.state.step}; checkpoint saved. "
                           f"Run `lstmmt train {self.run.root}` to resume.", markup=False)
        elif stopped == "non-finite loss":
            self.out.print(f"Training stopped: {MAX_NONFINITE} steps in a row gave a non-finite loss at step "
                           f"{self.state.step}. Lower train.lr, check the data, or try precision fp32; the last good "
                           f"weights are in {self.run.checkpoint('last')}.", markup=False)
        else:
            best = f"best validation BLEU {self.state.best_bleu:.2f}"
            self.out.print(f"Training finished ({stopped}) at step {self.state.step}; "
                           f"{'no validation set' if self.validation is None else best}.")


def train(run: RunDir, config: Config, restart: bool = False, parent: Parent | None = None) -> TrainState:
    """Train (or resume training) the model of a preprocessed run directory; under torchrun, one rank of it.

    A first start (no checkpoint yet, or `restart`) of a run whose train.init_from names a parent
    starts from the parent's weights. `parent` (checkpoint.load_parent; config built with its
    child_config) starts the run from it: refused once the run has checkpoints, unless `restart`."""
    run.require_preprocessed()
    parent = _parent_to_start_from(run, config, restart, parent)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    with distributed.joined(config.train.device) as (ranks, device), \
            run.lock("train", held=ranks.is_main, writable=run.checkpoints):  # rank 0's; checkpoints/ writable
        trainer = Trainer(run, config, device, ranks)
        if ranks.is_main:
            run.train_summary.unlink(missing_ok=True)  # training (again): not finished until it says so
        if restart:
            if ranks.is_main:
                for old in [*run.checkpoints.glob("*.pt"), run.metrics, run.train_log]:
                    old.unlink(missing_ok=True)
        elif not trainer.resume() and any(run.checkpoints.glob("*.pt")):
            raise UserError(f"no checkpoint in {run.checkpoints} could be read; "
                            "pass --restart to train from scratch")
        if parent is not None:
            trainer.start_from(parent)
        if ranks.is_main:  # with the settings the device chose, so a resumed run (on any device) keeps them
            trainer.config.save(run.config)
        return trainer.fit()


def _parent_to_start_from(run: RunDir, config: Config, restart: bool, given: Parent | None) -> Parent | None:
    """The parent whose weights this start loads, checked to fit the run before anything is
    written: `given`, or train.init_from's on a first start; None when the run resumes."""
    started = not restart and any(run.checkpoints.glob("*.pt"))
    if given is not None and started:
        raise UserError(f"{run.root} has checkpoints already: --init-from applies to a run's first start; drop it "
                        f"to resume the run, or add --restart to start it again from {given.path}")
    if started or (given is None and config.train.init_from is None):
        return None
    parent = given or checkpoint.load_parent(config.train.init_from)
    parent.check_child(run, config)
    return parent
