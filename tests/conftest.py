"""Fixtures shared by test modules."""

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lstmmt.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import toy  # noqa: E402  (the embedded corpus generator lives in data/, not in the package)

TINY_RUN = [
    "--set", "tokenizer.vocab_size=100", "--set", "model.embed_size=16", "--set", "model.hidden_size=32",
    "--set", "model.encoder_layers=1", "--set", "train.batch_tokens=1000", "--set", "train.valid_every=30",
    "--set", "data.max_ratio=10", "--set", "decode.max_len_b=3",
    "--set", "train.precision=fp32", "--set", "decode.precision=fp32",
]
"""A model small enough to train in seconds; untrained, it rarely stops before the length limit.
fp32 on every machine: with `auto`, a CPU with bf16 units trains another 30-step model, one
that on a Zen 5 EPYC ended every test sentence at once, which the translation tests cannot use."""


@pytest.fixture(scope="module")
def one_thread():
    """For modules with tiny models on the shared test machine: a second thread only waits.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_run(root: Path, seed: int = 11, steps: int = 30) -> Path:
    """ROOT/run: toy corpus (300 training pairs, 20 valid, 20 test) preprocessed with TINY_RUN, trained `steps` steps."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for split, pairs in toy.generate(300, 20, 20, seed=seed).items():
        (corpus / f"{split}.en").write_text("".join(en + "\n" for en, _ in pairs), encoding="utf-8")
        (corpus / f"{split}.de").write_text("".join(de + "\n" for _, de in pairs), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in ["preprocess", root / "run", "--src-lang", "en", "--tgt-lang", "de",
                                                  "--train", corpus / "train", "--valid", corpus / "valid",
                                                  "--test", corpus / "test", *TINY_RUN]])
    assert result.exit_code == 0, result.output
    if steps:
        result = runner.invoke(app, ["train", str(root / "run"), "--max-steps", str(steps)])
        assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run with a 30-step model, shared by the modules that test translation plumbing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_tiny_run(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(threads)
