"""Whatever the machine: precision chosen by what the device can run, GPU-count checks, RNG
states that resume on fewer GPUs, exact resume with a stacked decoder, short internal errors."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from lstmmt import checkpoint, device as device_module
from lstmmt.batching import read_ahead
from lstmmt.config import ModelConfig
from lstmmt.device import choose_precision, resolve_device
from lstmmt.distributed import check_gpus_for
from lstmmt.errors import UserError
from lstmmt.model import LSTM, Seq2Seq
from tests.helpers import TINY_TRAINING, copy_run, invoke, preprocess_toy

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "bf16_problem", lambda device: "this test's CPU has no bf16 units")


@pytest.fixture
def has_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "bf16_problem", lambda device: "")


def test_auto_picks_fp32_without_bf16_and_bf16_with_it(monkeypatch, no_bf16):
    assert choose_precision("auto", CPU, "train.precision", training=True).name == "fp32"
    assert "no bf16 units" in str(choose_precision("auto", CPU, "train.precision", training=True))
    monkeypatch.setattr(device_module, "bf16_problem", lambda device: "")
    assert choose_precision("auto", CPU, "train.precision", training=True).name == "bf16"
    assert choose_precision("fp32", CPU, "train.precision", training=True).name == "fp32"


def test_explicit_bf16_training_without_bf16_names_the_setting(no_bf16):
    with pytest.raises(UserError, match="train.precision=bf16.*set train.precision=auto"):
        choose_precision("bf16", CPU, "train.precision", training=True)
    # Search in bf16 runs anyway on a CPU (emulated), and says so.
    assert "emulated" in str(choose_precision("bf16", CPU, "decode.precision", training=False))


def test_the_probe_fails_where_onednn_is_limited_to_avx2():
    """ONEDNN_MAX_CPU_ISA=AVX2 imitates an AVX2-only CPU on a Xeon: no bf16 LSTM there, on any
    CPU this runs on (an AVX2 CPU says so from its flags, a Xeon from the failing probe)."""
    code = "import torch; from lstmmt.device import bf16_problem; print(repr(bf16_problem(torch.device('cpu'))))"
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() not in ("", "''"), out


def test_probe_runs_the_bf16_lstm_step(monkeypatch):
    """Past the flag check, the decision is the tiny LSTM step: a failing step is the reason."""
    device_module._bf16_problem.cache_clear()
    monkeypatch.setattr(device_module, "_cpu_has_bf16_units", lambda: True)

    def fails(device):
        raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")

    monkeypatch.setattr(device_module, "_bf16_lstm_step", fails)
    try:
        assert "primitive descriptor" in device_module.bf16_problem(CPU)
    finally:
        device_module._bf16_problem.cache_clear()


def test_cli_refuses_bf16_training_in_one_line_and_keeps_the_config(tmp_path, no_bf16):
    run = preprocess_toy(tmp_path, 300, TINY_TRAINING)
    before = (run / "config.yaml").read_text()
    result = invoke("train", run, "--max-steps", "3", "--set", "train.precision=bf16")
    assert result.exit_code == 1
    assert "train.precision=bf16" in result.output and "Traceback" not in result.output
    assert (run / "config.yaml").read_text() == before
    result = invoke("train", run, "--max-steps", "3")  # auto: fp32 here, and it says why
    assert result.exit_code == 0, result.output
    assert "precision fp32 (train.precision=auto: this test's CPU has no bf16 units)" in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_tokens"] == 300


def test_device_indices_are_checked_against_the_gpu_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match="sees 2 GPU.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(UserError, match="need 3 GPUs.*--nproc 2"):
        check_gpus_for(3, torch.device("cuda"))
    check_gpus_for(2, torch.device("cuda"))
    check_gpus_for(8, CPU)  # CPU ranks share the cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="unsupported device"):
        resolve_device("meta")


def test_rng_states_restore_with_fewer_gpus_than_saved(monkeypatch):
    """Eight GPUs at save time (the format before), one or none at resume."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]}
    checkpoint.restore_rng(saved, CPU)
    assert calls == []
    checkpoint.restore_rng(saved, torch.device("cuda", 0))
    assert len(calls) == 1 and torch.equal(calls[0][0], saved["cuda"][0]) and calls[0][1] == torch.device("cuda", 0)
    assert checkpoint.rng_state(CPU)["cuda"] == []


def test_resume_is_bit_exact_with_two_decoder_layers(tmp_path):
    settings = [*TINY_TRAINING, "--set", "model.decoder_layers=2", "--set", "model.dropout=0.3"]
    base = preprocess_toy(tmp_path / "base", 400, settings)
    straight, resumed = copy_run(base, tmp_path, "straight"), copy_run(base, tmp_path, "resumed")
    assert invoke("train", straight, "--max-steps", "24").exit_code == 0
    assert invoke("train", resumed, "--max-steps", "15").exit_code == 0  # stops where straight validates
    assert invoke("train", resumed, "--max-steps", "24").exit_code == 0
    expected = checkpoint.load(straight / "checkpoints/last.pt")["model"]
    got = checkpoint.load(resumed / "checkpoints/last.pt")["model"]
    assert any("decoder.layers.1." in key for key in expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_checkpoints_of_the_single_nn_lstm_decoder_still_load():
    torch.manual_seed(0)
    config = ModelConfig(embed_size=8, hidden_size=12, encoder_layers=1, decoder_layers=2, dropout=0.0)
    model = Seq2Seq(config, 30, 30, joint_vocab=True).eval()
    old = torch.nn.LSTM(8, 12, 2, batch_first=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    state |= {f"decoder.{name}": value for name, value in old.state_dict().items()}  # decoder.weight_ih_l1, ...
    model.load_state_dict(state)
    x = torch.randn(3, 5, 8)
    h = torch.randn(2, 3, 12)
    c = torch.randn(2, 3, 12)
    with torch.no_grad():
        expected, (h_old, c_old) = old(x, (h, c))
        got, h_new, c_new = model.decoder(x, h, c)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h_new, h_old)
    torch.testing.assert_close(c_new, c_old)


def test_lstm_runs_in_another_dtype_with_gradients_for_its_weights():
    """The mechanism that makes CUDA bf16 autocast run the LSTM in bf16, shown with float64."""
    torch.manual_seed(0)
    lstm = LSTM(4, 6, batch_first=True)
    x = torch.randn(2, 3, 4)
    out, (h, c) = lstm.run_in(torch.float64, x)
    assert out.dtype == h.dtype == c.dtype == torch.float64
    reference, _ = torch.nn.LSTM.forward(lstm.double(), x.double())
    torch.testing.assert_close(out, reference)
    lstm.float()
    out, _ = lstm.run_in(torch.float64, x)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())


def test_read_ahead_keeps_order_raises_and_stops():
    assert list(read_ahead(iter(range(20)), lambda i: i * i)) == [i * i for i in range(20)]

    def broken():
        yield 1
        raise ValueError("disk gone")

    with pytest.raises(ValueError, match="disk gone"):
        list(read_ahead(broken(), lambda i: i))
    reader = read_ahead(iter(range(1000)), lambda i: i)
    assert next(reader) == 0
    reader.close()  # the thread stops instead of reading the rest


def test_internal_errors_print_one_short_message(monkeypatch, tmp_path):
    from lstmmt import info

    def bug(run):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(info, "describe", bug)
    monkeypatch.delenv("LSTMMT_TRACEBACK", raising=False)
    result = invoke("info", tmp_path)
    assert result.exit_code == 1
    assert "internal error: RuntimeError: something inside broke" in result.output
    assert "LSTMMT_TRACEBACK=1" in result.output and "second line" not in result.output
    monkeypatch.setenv("LSTMMT_TRACEBACK", "1")
    result = invoke("info", tmp_path)
    assert isinstance(result.exception, RuntimeError)
