"""What the test modules share besides fixtures (those are in tests/conftest.py): the tiny
model settings, CLI calls, toy corpora and runs, hand-built step models for search, and a
live `lstmmt serve` process. A test module imports from here, never from another test module."""

import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import torch
from typer.testing import CliRunner

from lstmmt.batching import pad
from lstmmt.cli import app
from lstmmt.config import ModelConfig
from lstmmt.model import Seq2Seq
from lstmmt.tokenizer import BOS, EOS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import toy  # the embedded corpus generator lives in data/, not in the package

# -- tiny runs -------------------------------------------------------------------------------

TINY_MODEL = [
    "--set", "tokenizer.vocab_size=100", "--set", "model.embed_size=16", "--set", "model.hidden_size=32",
    "--set", "model.encoder_layers=1", "--set", "data.max_ratio=10",
]
"""The smallest model that learns something of the toy task; every tiny run in the tests starts from it."""

TINY_RUN = [
    *TINY_MODEL, "--set", "train.batch_tokens=1000", "--set", "train.valid_every=30", "--set", "decode.max_len_b=3",
    "--set", "train.precision=fp32", "--set", "decode.precision=fp32",
    "--set", "train.lr_schedule=plateau", "--set", "train.lr=0.001", "--set", "train.warmup_steps=500",
]
"""A model small enough to train in seconds; barely trained (30 steps of a slow warm-up), it rarely
stops before the length limit, which the translation tests need.
fp32 on every machine: with `auto`, a CPU with bf16 units trains another 30-step model, one
that on a Zen 5 EPYC ended every test sentence at once, which the translation tests cannot use."""

TINY_TRAINING = [
    *TINY_MODEL, "--set", "model.dropout=0.2", "--set", "train.batch_tokens=300", "--set", "train.valid_every=15",
    "--set", "train.log_every=5", "--set", "train.threads=1", "--set", "train.keep_checkpoints=2",
    "--set", "train.patience=0", "--set", "train.lr_schedule=plateau", "--set", "train.warmup_steps=10",
]
"""For tests of training itself (resume, stopping, checkpoints, devices): small batches, so that
validation, checkpoints and the plateau schedule come every few steps."""

runner = CliRunner()


def invoke(*args: object, **kwargs: Any):
    """`lstmmt ARGS...` in this process (arguments turned into strings); the CliRunner result."""
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, *words: str) -> None:
    """Exit 1, no traceback, and one error line that names each of `words` (a CliRunner result or a process)."""
    if isinstance(result, subprocess.CompletedProcess):
        status, output = result.returncode, result.stdout + result.stderr
    else:
        status, output = result.exit_code, result.output
    assert status == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, output
    for word in words:
        assert word in error_lines[0], output


def write_corpus(folder: Path, n_train: int, n_valid: int, n_test: int, seed: int = 7) -> None:
    """FOLDER/{train,valid,test}.{en,de}: toy pairs, line-aligned."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in toy.generate(n_train, n_valid, n_test, seed=seed).items():
        (folder / f"{split}.en").write_text("".join(en + "\n" for en, _ in pairs), encoding="utf-8")
        (folder / f"{split}.de").write_text("".join(de + "\n" for _, de in pairs), encoding="utf-8")


def preprocess_toy(root: Path, n_train: int, settings: list[str], test: bool = False) -> Path:
    """ROOT/run preprocessed from a toy corpus of n_train training pairs (plus valid and, if asked, test)."""
    write_corpus(root / "corpus", n_train, 150 if test else 20, 150 if test else 5)
    run = root / "run"
    splits = ["--valid", root / "corpus/valid"] + (["--test", root / "corpus/test"] if test else [])
    result = invoke("preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", root / "corpus/train",
                    *splits, *settings)
    assert result.exit_code == 0, result.output
    return run


def make_tiny_run(root: Path, seed: int = 11, steps: int = 30) -> Path:
    """ROOT/run: toy corpus (300 training pairs, 20 valid, 20 test) preprocessed with TINY_RUN,
    trained `steps` steps."""
    corpus = root / "corpus"
    write_corpus(corpus, 300, 20, 20, seed=seed)
    result = invoke("preprocess", root / "run", "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                    "--valid", corpus / "valid", "--test", corpus / "test", *TINY_RUN)
    assert result.exit_code == 0, result.output
    if steps:
        result = invoke("train", root / "run", "--max-steps", steps)
        assert result.exit_code == 0, result.output
    return root / "run"


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    """A copy of `run` at TMP_PATH/NAME to change freely, without the lock file of the run it copies."""
    target = tmp_path / name
    shutil.copytree(run, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


# -- hand-built and random step models for search ------------------------------------------

A, B, C = 4, 5, 6
VOCAB = 7

# Next-token probabilities given the previous token. Greedy takes A (0.6) and then has at
# best 0.4 for EOS: 0.24. Beam search finds B EOS: 0.4 * 0.9 = 0.36.
TABLE = {
    BOS: {A: 0.6, B: 0.4},
    A: {EOS: 0.4, C: 0.3, B: 0.3},
    B: {EOS: 0.9, C: 0.1},
    C: {EOS: 1.0},
}

SRC = torch.tensor([[A, B, EOS]])
LENGTHS = torch.tensor([3])


class Rows(NamedTuple):
    """Dummy memory or state: one row per hypothesis, reordered as search reorders hypotheses."""

    rows: torch.Tensor

    def select(self, index):
        return Rows(self.rows.index_select(0, index))


class TableModel:
    """A fake step model: log P(next | previous token) from TABLE; memory/state are dummies."""

    def encode(self, src, src_lengths):
        return Rows(torch.arange(src.size(0))), Rows(torch.arange(src.size(0)))

    def decode_step(self, prev, memory, state):
        log_probs = torch.full((prev.size(0), VOCAB), -math.inf)
        for row, token in enumerate(prev.tolist()):
            for nxt, p in TABLE.get(token, {}).items():  # a dead (-inf) hypothesis may hold any token
                log_probs[row, nxt] = math.log(p)
        return log_probs, state


def random_model(seed: int = 0) -> Seq2Seq:
    """An untrained one-layer model over 30 tokens, the same for the same seed."""
    torch.manual_seed(seed)
    config = ModelConfig(embed_size=16, hidden_size=32, encoder_layers=1, decoder_layers=1, dropout=0.0)
    return Seq2Seq(config, 30, 30, joint_vocab=True).eval()


def random_batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random source sentences of 1 to 11 tokens, padded with EOS appended, and their lengths."""
    gen = torch.Generator().manual_seed(seed)
    sentences = [torch.randint(4, 30, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).numpy()
                 for _ in range(n)]
    return pad(sentences, suffix=EOS), torch.tensor([len(s) + 1 for s in sentences])


# -- text for the tiny run --------------------------------------------------------------------

TOY_LINES = ["twenty-one", "", "half past seven", "on Monday the third of May", "  ", "seven"]
"""Toy-task sources, two of them with nothing to translate."""

SERVE_LINES = ["twenty-one", "half past seven", "on Monday the third of May", "seven", "ten past nine in the evening",
               "the fifth of June", "forty-two", "a quarter to three"]
"""Toy-task sources the server tests send."""

# -- a live server ------------------------------------------------------------------------------

SERVE_SETTINGS = ["--device", "cpu", "--precision", "fp32"]
"""The server's model settings; the reference Translator in the serve tests uses the same."""
START_TIMEOUT = 300  # seconds: the test machine may be shared and slow


class Server:
    """`lstmmt serve RUN --port 0 ...` as a subprocess; its address read from its stderr."""

    def __init__(self, run: Path, *options: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "lstmmt", "serve", str(run), "--port", "0", "--threads", "1",
                   *SERVE_SETTINGS, *options]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        found: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(found,), daemon=True).start()
        try:
            self.url = found.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines)) from None
        if self.url is None:
            raise AssertionError(f"the server exited {self.proc.wait()}:\n" + "\n".join(self.lines))

    def _read(self, found: queue.Queue) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"Listening on (http://\S+)", line)
            if match:
                found.put(match.group(1))
        found.put(None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(url: str, path: str, body: Any = None, content_type: str | None = "application/json",
            method: str | None = None, timeout: float = 120) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or text) of one request; 4xx and 5xx are answers too."""
    req = urllib.request.Request(url + path, data=_request_body(body, content_type), method=method)
    if content_type is not None and req.data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    text = raw.decode("utf-8")
    try:
        return status, headers, json.loads(text)
    except json.JSONDecodeError:
        return status, headers, text


def _request_body(body: Any, content_type: str | None) -> bytes | None:
    """Bytes as they are, None for no body, JSON for a JSON request, else the text of `body`."""
    if body is None or isinstance(body, bytes):
        return body
    return json.dumps(body).encode() if content_type == "application/json" else str(body).encode()
