"""Data-parallel training: two gloo ranks on CPU train the same model a single process would."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lstmmt import checkpoint, distributed
from lstmmt.config import Config
from lstmmt.rundir import RunDir
from lstmmt.train import Trainer
from tests.helpers import TINY_TRAINING, preprocess_toy

# TINY_TRAINING without dropout, so ranks and the single process draw no random numbers that could differ;
# fp32 on every CPU (bf16 under auto sums the gradients of two ranks with another rounding).
SETTINGS = [*TINY_TRAINING, *(x for setting in ("model.encoder_layers=2", "model.dropout=0.0", "train.valid_every=10",
                                        "train.lr_schedule=constant", "train.warmup_steps=5", "train.max_steps=30",
                                        "train.device=cpu", "train.precision=fp32") for x in ("--set", setting))]


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    return preprocess_toy(tmp_path_factory.mktemp("ddp"), 400, SETTINGS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_batches(trainer: Trainer) -> list[list[int]]:
    """Make `trainer` note the corpus indices of every batch it trains on."""
    seen: list[list[int]] = []
    batches = trainer.batches

    def recording():
        for batch, weight, position in batches():
            seen.append(sorted(batch.indices.tolist()) if weight else [])
            yield batch, weight, position

    trainer.batches = recording
    return seen


def train_rank(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    """One rank, set up as torchrun would (environment variables), saving its final weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = RunDir(Path(run_dir))
    with distributed.joined("cpu") as (ranks, device):
        trainer = Trainer(run, Config.load(run.config), device, ranks)
        seen = record_batches(trainer)
        trainer.fit()
        torch.save({"model": trainer.model.state_dict(), "seen": seen}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_a_single_process(preprocessed, tmp_path):
    single_run, ddp_run = tmp_path / "single", tmp_path / "ddp"
    shutil.copytree(preprocessed, single_run)
    shutil.copytree(preprocessed, ddp_run)
    torch.set_num_threads(1)
    single = Trainer(RunDir(single_run), Config.load(single_run / "config.yaml"), torch.device("cpu"))
    single_seen = record_batches(single)
    single.fit()
    expected = single.model.state_dict()

    mp.spawn(train_rank, args=(2, free_port(), str(ddp_run), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Each rank trained on its own half of every global batch, and together on exactly the single run's batches.
    assert len(single_seen) == len(results[0]["seen"]) == len(results[1]["seen"]) == 30
    for whole, first, second in zip(single_seen, results[0]["seen"], results[1]["seen"]):
        assert not set(first) & set(second) and sorted(first + second) == whole
        assert abs(len(first) - len(second)) <= 1
    ranks = [result["model"] for result in results]
    saved = checkpoint.load(ddp_run / "checkpoints/last.pt")
    assert saved["step"] == 30
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(saved["model"][name], ranks[0][name])


@pytest.mark.slow
def test_nproc_relaunches_under_torchrun(preprocessed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(preprocessed, run)
    result = subprocess.run([sys.executable, "-m", "lstmmt", "train", str(run), "--nproc", "2", "--max-steps", "12"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "x 2 ranks" in result.stderr
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == 12
    assert (run / "train.json").exists()
