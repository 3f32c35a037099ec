"""Gradient accumulation (train.accumulate): several batches make one optimizer step, their loss
normalised over all of them; steps count optimizer steps, and a run resumes between steps exactly."""

import itertools
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lstmmt import checkpoint, distributed
from lstmmt.batching import collate
from lstmmt.config import Config
from lstmmt.rundir import RunDir
from lstmmt.train import Trainer, optimizer_steps
from tests.helpers import copy_run, invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

EXACT = ["model.dropout=0.0", "train.lr_schedule=constant", "train.warmup_steps=0", "train.clip_norm=1e9",
         "train.device=cpu"]
"""No dropout, a full learning rate from the first step, and no clipping (which would hide the
gradient's scale): two ways of computing one update must then agree."""


def trainer_of(run: Path, *sets: str) -> Trainer:
    """A Trainer of `run` (nothing is written until it trains) with EXACT and `sets` laid over its config."""
    config = Config.load(run / "config.yaml").with_overrides([*EXACT, *sets])
    return Trainer(RunDir(run), config, torch.device("cpu"))


def test_two_accumulated_batches_make_the_update_of_one_batch_holding_both(tiny_run):
    accumulated, whole = trainer_of(tiny_run, "train.accumulate=2"), trainer_of(tiny_run)
    src, tgt = accumulated.train_data[0]  # the usual segmentation (no sampled ones here)
    first, second = np.arange(0, 7), np.arange(7, 20)
    b1, b2, both = collate(first, src, tgt), collate(second, src, tgt), collate(np.arange(0, 20), src, tgt)
    weight = 1 / both.tgt_tokens
    assert b1.tgt_tokens + b2.tgt_tokens == both.tgt_tokens

    loss_accumulated, _ = accumulated.optimizer_step([(b1, weight), (b2, weight)])
    loss_whole, _ = whole.train_step(both, weight)

    torch.testing.assert_close(loss_accumulated, loss_whole)
    assert accumulated.state.step == whole.state.step == 1
    for (name, mine), theirs in zip(accumulated.model.named_parameters(), whole.model.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"{name} grad: {m}")
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


def test_a_step_s_batches_share_one_weight_and_its_last_carries_the_position(tiny_run):
    one = trainer_of(tiny_run)
    epoch = list(itertools.takewhile(lambda item: item[2][0] == 0, one.batches()))
    n = next(k for k in (3, 4, 5) if len(epoch) % k)  # so that the epoch ends on a shorter step
    expected = []
    for start in range(0, len(epoch), n):
        step = epoch[start:start + n]
        tokens = sum(batch.tgt_tokens for batch, _, _ in step)
        expected += [(batch.indices.tolist(), 1 / tokens, position if k == len(step) - 1 else None)
                     for k, (batch, _, position) in enumerate(step)]

    grouped = trainer_of(tiny_run, f"train.accumulate={n}")
    seen = [(batch.indices.tolist(), weight, position)
            for batch, weight, position in itertools.islice(grouped.batches(), len(epoch))]
    assert seen == expected
    steps = list(itertools.islice(optimizer_steps(grouped.batches()), len(expected)))
    assert [position for _, position in steps][: -(-len(epoch) // n)] == [p for _, _, p in expected if p]


SETS = ["--set", "train.accumulate=2", "--set", "train.valid_every=5", "--set", "train.log_every=1",
        "--set", "train.lr_schedule=plateau"]  # a rate that does not depend on --max-steps, which changes here
STEPS = 12


def fresh_copy(tiny_run: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the tiny run, preprocessed but never trained."""
    run = copy_run(tiny_run, tmp_path, name)
    for trained in (run / "checkpoints", run / "logs"):
        for path in trained.glob("*"):
            path.unlink()
    (run / "train.json").unlink()
    return run


@pytest.fixture(scope="module")
def uninterrupted(tiny_run, tmp_path_factory) -> Path:
    run = fresh_copy(tiny_run, tmp_path_factory.mktemp("accumulate"), "reference")
    result = invoke("train", run, "--max-steps", STEPS, *SETS)
    assert result.exit_code == 0, result.output
    return run


def timeless(state: dict) -> dict:
    """A saved TrainState less the training time, which no two runs share."""
    return {key: value for key, value in state.items() if "elapsed" not in key}


def interrupt_after(monkeypatch, batches: int, interrupt) -> None:
    """Make training call `interrupt` once `batches` batches have been handed out, before the next one."""
    original = Trainer.batches

    def interrupted(self):
        for number, item in enumerate(original(self), start=1):
            yield item
            if number == batches:
                interrupt()

    monkeypatch.setattr(Trainer, "batches", interrupted)


def crash() -> None:
    raise RuntimeError("killed")


@pytest.mark.parametrize("stop", ["SIGTERM", "crash", "max_steps"])
def test_a_run_stopped_between_accumulated_batches_resumes_bit_identically(tiny_run, uninterrupted, tmp_path,
                                                                            monkeypatch, stop):
    """SIGTERM and a crash come after the first batch of step 8: a signal finishes the step and
    saves it, a crash leaves the checkpoint of step 5. max_steps stops after step 10, where the
    uninterrupted run validates too (a stop elsewhere would add a validation, which counts
    against patience)."""
    run = fresh_copy(tiny_run, tmp_path, "stopped")
    if stop == "max_steps":
        first = invoke("train", run, "--max-steps", 10, *SETS)
    else:
        interrupt = (lambda: os.kill(os.getpid(), signal.SIGTERM)) if stop == "SIGTERM" else crash
        interrupt_after(monkeypatch, 2 * 7 + 1, interrupt)
        first = invoke("train", run, "--max-steps", STEPS, *SETS)
        monkeypatch.undo()
    assert first.exit_code == {"SIGTERM": 143, "crash": 1, "max_steps": 0}[stop], first.output
    saved = checkpoint.load(run / "checkpoints/last.pt")["step"]
    assert saved == {"SIGTERM": 8, "crash": 5, "max_steps": 10}[stop]

    result = invoke("train", run, "--max-steps", STEPS, *SETS)
    assert result.exit_code == 0 and f"step {saved}" in result.output, result.output
    resumed, expected = (checkpoint.load(r / "checkpoints/last.pt") for r in (run, uninterrupted))
    assert resumed["step"] == STEPS and timeless(resumed["state"]) == timeless(expected["state"])
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def test_steps_logs_validations_and_the_saved_position_count_optimizer_steps(tiny_run, uninterrupted):
    records = [json.loads(line) for line in (uninterrupted / "logs/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if r["event"] == "valid"] == [5, 10, STEPS]
    steps = optimizer_steps(trainer_of(tiny_run, "train.accumulate=2").batches())
    after = [(len(parts), position) for parts, position in itertools.islice(steps, STEPS)]
    assert sum(size for size, _ in after) > STEPS and {size for size, _ in after} <= {1, 2}
    state = checkpoint.load(uninterrupted / "checkpoints/last.pt")["state"]
    assert (state["epoch"], state["batch_in_epoch"]) == after[-1][1]


# -- several processes -------------------------------------------------------------------------

def train_rank(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    """One rank, set up as torchrun would, counting the gradient all-reduces of its DDP wrapper."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.joined("cpu") as (ranks, device):
        trainer = Trainer(RunDir(Path(run_dir)), Config.load(Path(run_dir) / "config.yaml"), device, ranks)
        allreduces = []

        def counting(state, bucket):
            allreduces.append(bucket.index())
            return allreduce_hook(state, bucket)

        trainer.replica.register_comm_hook(None, counting)
        trainer.fit()
        torch.save({"model": trainer.model.state_dict(), "allreduces": len(allreduces), "steps": trainer.state.step},
                   Path(out_dir) / f"rank{rank}.pt")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_all_reduce_once_per_step_and_match_a_single_process(tiny_run, tmp_path):
    settings = [*EXACT, "train.accumulate=2", "train.max_steps=8", "train.valid_every=4"]
    single_run, ddp_run = fresh_copy(tiny_run, tmp_path, "single"), fresh_copy(tiny_run, tmp_path, "ddp")
    for run in (single_run, ddp_run):
        Config.load(run / "config.yaml").with_overrides(settings).save(run / "config.yaml")
    single = trainer_of(single_run, *settings)
    single.fit()

    mp.spawn(train_rank, args=(2, free_port(), str(ddp_run), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert result["steps"] == 8 and result["allreduces"] == 8  # the tiny model's gradients fit one bucket
    for name, value in single.model.state_dict().items():
        assert torch.equal(results[0]["model"][name], results[1]["model"][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(results[0]["model"][name], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
