"""The GPU path, on a GPU: training in bf16 and fp32, checkpoints across devices, exact resume,
batch-independent beam search, torchrun with NCCL, and bf16 (not fp16) LSTMs under autocast.

Marked `cuda` and skipped where PyTorch sees no CUDA device; `pytest -m cuda` runs only these
(benchmarks/gpu_check.sh does, in about a minute on one H100/H200). To check the tests' own
logic without a GPU, LSTMMT_TEST_DEVICE=cpu runs the ones that do not need CUDA itself on the
CPU (the bf16 ones need bf16 units, NCCL needs a GPU).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lstmmt import checkpoint
from lstmmt.config import Config
from lstmmt.rundir import RunDir
from tests.helpers import TINY_TRAINING, copy_run, invoke, preprocess_toy, random_batch, random_model

# cuBLAS may reduce in a different order from run to run unless its workspace is fixed
# (PyTorch's reproducibility notes); set before this process first uses cuBLAS, for the
# bit-exact resume test.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
DEVICE = os.environ.get("LSTMMT_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="no CUDA device"),
]
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs CUDA itself (LSTMMT_TEST_DEVICE is not cuda)")


def bf16_runs_here() -> bool:
    """Whether DEVICE trains in bf16 (False without a GPU to ask: the skip for that comes first or not at all)."""
    from lstmmt.device import bf16_problem

    if ON_GPU and not torch.cuda.is_available():
        return False
    return not bf16_problem(torch.device(DEVICE))


PRECISIONS = ["fp32", pytest.param("bf16", marks=pytest.mark.skipif("not bf16_runs_here()",
                                                                    reason="no CUDA device, or no bf16 on it"))]
# TINY_TRAINING with a validation at the step where the interrupted run of the resume test stops.
SETTINGS = [*TINY_TRAINING, "--set", "train.valid_every=20", "--set", "train.log_every=5"]


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    return preprocess_toy(tmp_path_factory.mktemp("cuda"), 600, SETTINGS)


def train(run: Path, steps: int, *extra: str, device: str = DEVICE) -> None:
    result = invoke("train", run, "--max-steps", str(steps), "--device", device, *extra)
    assert result.exit_code == 0, result.output


def train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fifty_steps_train_with_finite_falling_loss(preprocessed, tmp_path, precision):
    run = copy_run(preprocessed, tmp_path, precision)
    train(run, 50, "--set", f"train.precision={precision}")
    summary = json.loads((run / "train.json").read_text())
    assert summary["precision"] == precision and summary["device"].startswith(DEVICE) and summary["step"] == 50
    losses = train_losses(run)
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses), losses
    # TINY_TRAINING on the CPU: 4.59 at step 5, 4.02 at step 50
    # (the mean of the last three 0.4 nats under the first two)
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.2, losses
    assert losses[-1] < losses[4] < losses[0], losses


def logits(model: torch.nn.Module, device: str) -> torch.Tensor:
    torch.manual_seed(5)
    vocab = model.tgt_embed.num_embeddings
    src = torch.randint(4, vocab, (3, 7))
    tgt = torch.randint(4, vocab, (3, 5))
    model = model.to(device).eval()
    with torch.no_grad():
        return model.logits(src.to(device), torch.tensor([7, 6, 4], device=device), tgt.to(device)).float().cpu()


@needs_gpu
def test_checkpoints_move_between_gpu_and_cpu(preprocessed, tmp_path):
    run = copy_run(preprocessed, tmp_path, "moves")
    train(run, 20, device=DEVICE)  # saved on the GPU
    train(run, 30, device="cpu")  # resumed on the CPU: model, fused Adam state and RNG
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == 30
    train(run, 40, device=DEVICE)  # and back
    payload = checkpoint.load(run / "checkpoints/last.pt")
    assert payload["step"] == 40 and all(t.device.type == "cpu" for t in payload["model"].values())
    from lstmmt.tokenizer import Tokenizer

    model, _, _ = checkpoint.load_model(run / "checkpoints/last.pt", Tokenizer.load(RunDir(run).tokenizer_dir))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32
    try:
        on_gpu = logits(model, DEVICE)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(on_gpu, logits(model, "cpu"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decoder_layers", [1, 2])
def test_resume_on_the_device_is_bit_identical(preprocessed, tmp_path, decoder_layers):
    layers = ["--set", f"model.decoder_layers={decoder_layers}"]
    reference = copy_run(preprocessed, tmp_path, "reference")
    train(reference, 40, *layers)
    resumed = copy_run(preprocessed, tmp_path, "resumed")
    train(resumed, 20, *layers)  # stops (and validates, as the reference does) at step 20
    train(resumed, 40, *layers)
    expected = checkpoint.load(reference / "checkpoints/last.pt")
    got = checkpoint.load(resumed / "checkpoints/last.pt")
    assert expected["step"] == got["step"] == 40
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name


@pytest.mark.parametrize("precision", PRECISIONS)
def test_beam_search_does_not_depend_on_the_batch(precision):
    """As tests/test_search.py on the CPU: one sentence per batch and all in one batch."""
    from lstmmt.config import DecodeConfig
    from lstmmt.decoding import for_search, search_corpus

    device = torch.device(DEVICE)
    model = for_search(random_model(seed=3).to(device), device, precision)
    src, lengths = random_batch(40, seed=5)
    sentences = [row[: int(n) - 1].numpy() for row, n in zip(src, lengths)]

    def translate(batch_tokens: int) -> list:
        options = DecodeConfig(beam_size=5, batch_tokens=batch_tokens)
        return [hyps[0] for hyps in search_corpus(model, sentences, options, device, precision)]

    one_by_one, all_at_once = translate(1), translate(100_000)
    assert sum(len(h.tokens) for h in all_at_once) > 40
    same = [a.tokens == b.tokens for a, b in zip(one_by_one, all_at_once)]
    if precision == "fp32":
        assert all(same), [i for i, s in enumerate(same) if not s]
        for a, b in zip(one_by_one, all_at_once):
            assert math.isclose(a.score, b.score, rel_tol=1e-4, abs_tol=1e-5)
    else:  # bf16 products of other batch shapes may round differently: a near-tie can flip
        assert sum(same) >= 38, [i for i, s in enumerate(same) if not s]


NCCL_SCRIPT = """
import os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from lstmmt.distributed import Ranks, any_rank, from_main, sum_over_ranks
from tests.helpers import random_model
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(device)
dist.init_process_group("nccl")
assert dist.get_backend() == "nccl"
pretend = Ranks(0, 2)  # lstmmt's collectives skip a one-rank world; make them run on NCCL anyway
assert any_rank([False, True], pretend, device) == [False, True]
assert sum_over_ranks([1.5, 2.0], pretend, device) == [1.5, 2.0]
assert from_main({"bleu": 1.0}, pretend) == {"bleu": 1.0}
model = DistributedDataParallel(random_model().train().to(device), device_ids=[device])
src = torch.randint(4, 30, (4, 6), device=device)
model(src, torch.full((4,), 6, device=device), src, src).backward()
assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
dist.destroy_process_group()
print("nccl ok")
"""


def torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@needs_gpu
def test_training_under_torchrun_with_one_process(preprocessed, tmp_path):
    """`torchrun --nproc_per_node 1 -m lstmmt train` (lstmmt's own --nproc 1 does not relaunch).
    With one rank lstmmt starts no process group, so NCCL itself is the next test."""
    run = copy_run(preprocessed, tmp_path, "torchrun")
    result = torchrun("-m", "lstmmt", "train", str(run), "--max-steps", "10", "--device", "cuda")
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == 10


@needs_gpu
def test_nccl_process_group_runs_ddp_and_lstmmt_collectives(tmp_path):
    script = tmp_path / "nccl_check.py"
    script.write_text(NCCL_SCRIPT)
    result = torchrun(str(script))
    assert result.returncode == 0 and "nccl ok" in result.stdout, result.stderr[-3000:]


@needs_gpu
@pytest.mark.skipif("not bf16_runs_here()", reason="no CUDA device, or no bf16 on it")
def test_lstms_run_in_bf16_not_fp16_in_a_bf16_training_step(preprocessed):
    """cuDNN's RNN autocast casts to fp16 whatever dtype autocast names
    (aten/src/ATen/cudnn/AutocastRNN.cpp); lstmmt's LSTM must run in bf16 instead."""
    from lstmmt.train import Trainer

    run = RunDir(preprocessed)
    config = Config.load(run.config).with_overrides(["train.precision=bf16", "train.batch_tokens=300"])
    trainer = Trainer(run, config, torch.device(DEVICE))
    seen: list[tuple[str, torch.dtype]] = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: seen.append((name, out[0].dtype)))
             for name, module in trainer.model.named_modules() if isinstance(module, torch.nn.LSTM)]
    try:
        trainer.model.train()
        batch, weight, _ = next(trainer.batches())
        loss, found_inf = trainer.train_step(batch, weight)
    finally:
        for hook in hooks:
            hook.remove()
    names = {name for name, _ in seen}
    assert {"encoder.forward_lstms.0", "encoder.backward_lstms.0", "decoder.layers.0"} <= names, names
    assert all(dtype == torch.bfloat16 for _, dtype in seen), seen
    assert torch.isfinite(loss) and found_inf.item() == 0.0
    grads = [p.grad for n, p in trainer.model.named_parameters() if "lstm" in n or n.startswith("decoder.")]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
