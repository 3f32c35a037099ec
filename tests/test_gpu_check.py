"""The benchmark helpers CI can check without a GPU: the FLOP count behind the efficiency
figure, the launcher that measures a command's own peak memory, gpu_check.sh's answer on a
machine without CUDA, peers.py's choice of torch, and lstmmt running where `datasets` is not
installed (as on the GPU machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import MeasuredProcess, flops_per_tgt_token  # noqa: E402


def tiny(**changes):
    model = dict(embed_size=2, hidden_size=4, encoder_layers=1, decoder_layers=1, attention="luong",
                 input_feeding=False, tie_embeddings=False)
    return SimpleNamespace(**{**model, **changes})


def test_flops_of_a_tiny_model_counted_by_hand():
    # E=2, H=4 (h=2 per encoder direction), V=10; 1.5 source tokens and 3 attended positions per target token.
    # encoder: 2 directions x 2*4*2*(2+2) = 128, keys 2*4*4 = 32 -> 160 per source token, x 1.5 = 240
    # decoder 2*4*4*(2+4) = 192; attention (2*4 + 2*4) * 3 = 48; combine 2*8*4 = 64; output 2*4*10 = 80
    assert flops_per_tgt_token(tiny(), 10, 1.5, 3) == 3 * (240 + 192 + 48 + 64 + 80)
    # Two layers each side, dot attention, input feeding, tied embeddings (H != E), 1 and 2.
    # encoder: 2 x 2*4*2*(2+2) + 2 x 2*4*2*(4+2) = 128 + 192 = 320, no keys
    # decoder: 2*4*4*(2+4+4) + 2*4*4*(4+4) = 320 + 256 = 576; attention 16 * 2 = 32; combine 64
    # output: pre-output 2*4*2 = 16 + tied 2*2*10 = 40
    model = tiny(encoder_layers=2, decoder_layers=2, attention="dot", input_feeding=True, tie_embeddings=True)
    assert flops_per_tgt_token(model, 10, 1.0, 2) == 3 * (320 + 576 + 32 + 64 + 56)
    # Bahdanau: the query projection 2*4*4 = 32 on top of scores and context.
    assert flops_per_tgt_token(tiny(attention="bahdanau"), 10, 1.5, 3) == 3 * (240 + 192 + 32 + 48 + 64 + 80)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_measured_command_reports_its_own_peak_memory_not_this_process():
    ballast = b"x" * (600 << 20)  # this process's high-water mark, which a forked child's ru_maxrss starts from
    usage = MeasuredProcess([sys.executable, "-c", "import sys; data = b'y' * (80 << 20); sys.exit(3)"]).wait()
    assert len(ballast) and usage["exit_code"] == 3
    assert 80 < usage["peak_rss_mb"] < 300, usage
    assert 0 < usage["wall_s"] < 60 and usage["cpu_s"] > 0


def test_flops_of_issue_13s_model_are_about_45_mflop():
    """Issue 13's estimate for its comparison model (BiLSTM 1 x 256, decoder 512, untied 8k output)."""
    model = tiny(embed_size=256, hidden_size=512)
    assert 40e6 < flops_per_tgt_token(model, 8000, 1.0, 14) < 50e6


def test_gpu_check_without_cuda_says_so_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh")], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "no CUDA device" and report["cuda"] is False
    assert report["benchmark"] == "gpu_check" and report["torch"]


def test_peers_takes_this_interpreters_torch_only_for_a_cuda_build(monkeypatch):
    import peers
    import torch

    assert peers.torch_source("pip", "cuda") == "pip" and peers.torch_source("current", "cpu") == "current"
    assert peers.torch_source("auto", "cpu") == "pip"
    monkeypatch.setattr(torch.version, "cuda", None)
    assert peers.torch_source("auto", "cuda") == "pip"
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert peers.torch_source("auto", "cuda") == "current"


BLOCK_DATASETS = """
import importlib.abc, sys
class NoDatasets(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("datasets is blocked (as on the GPU machine)")
sys.meta_path.insert(0, NoDatasets())
"""


@pytest.fixture
def without_datasets(tmp_path):
    """An environment whose interpreter cannot import `datasets` (a sitecustomize blocks it)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_DATASETS)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))


def test_lstmmt_runs_without_datasets(without_datasets, tmp_path):
    blocked = subprocess.run([sys.executable, "-c", "import datasets"], env=without_datasets, capture_output=True,
                             text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr
    modules = "lstmmt.cli, lstmmt.corpus, lstmmt.preprocess, lstmmt.train, lstmmt.linestream, lstmmt.evaluate, " \
              "lstmmt.info"
    done = subprocess.run([sys.executable, "-c", f"import {modules}"], env=without_datasets, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.en").write_text("".join(f"number {i}\n" for i in range(200)))
    (corpus / "train.de").write_text("".join(f"Nummer {i}\n" for i in range(200)))
    done = subprocess.run([sys.executable, "-m", "lstmmt", "preprocess", str(tmp_path / "run"), "--src-lang", "en",
                           "--tgt-lang", "de", "--train", str(corpus / "train"), "--vocab-size", "40"],
                          env=without_datasets, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run/data/meta.json").exists()


def test_gpu_check_parts_time_out_fail_and_skip_without_stopping_the_others(monkeypatch, tmp_path):
    import argparse

    import gpu_check

    monkeypatch.setattr(gpu_check, "WORK", tmp_path)
    check = gpu_check.Check(argparse.Namespace(budget=60.0, parts=""))
    py = sys.executable
    check.part("hangs", lambda p: p.run([py, "-c", "import time; time.sleep(60)"], 6))
    check.part("fails", lambda p: p.run([py, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], 30))
    check.part("needs_failed", lambda p: 1, needs=("fails",))
    check.part("works", lambda p: p.run([py, "-c", "print('noise'); print('{\"x\": 1}')"], 30))
    status = {name: entry["status"] for name, entry in check.results.items()}
    assert status == {"hangs": "timeout", "fails": "failed", "needs_failed": "skipped", "works": "ok"}
    assert check.results["hangs"]["seconds"] < 20
    assert "exit 3" in check.results["fails"]["error"] and "boom" in check.results["fails"]["error"]
    assert check.results["works"]["result"] == {"x": 1}
    check.args.budget = 0.0  # spent: later parts are skipped, not started
    check.part("late", lambda p: p.run([py, "-c", "print('{}')"], 30))
    assert check.results["late"]["status"] == "skipped" and "budget" in check.results["late"]["reason"]
