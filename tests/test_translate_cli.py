"""`lstmmt translate` as a command: option ranges, inputs that are pipes, devices or
directories, outputs that are directories, signals, an interactive pipe, ensembles, and
`evaluate --split` options. Each test failed on the code before the Translator API."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lstmmt import Translator
from tests.helpers import invoke, make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, key", [
    (["--beam", "0"], "decode.beam_size"),
    (["--beam", "-2"], "decode.beam_size"),
    (["--set", "decode.beam_size=0"], "decode.beam_size"),
    (["--batch-tokens", "0"], "decode.batch_tokens"),
    (["--length-penalty", "nan"], "decode.length_penalty"),
    (["--n-best", "6"], "decode.n_best"),
    (["--n-best", "0"], "decode.n_best"),
    (["--beam", "2", "--n-best", "3"], "decode.n_best"),
    (["--set", "decode.max_len_a=-1"], "decode.max_len_a"),
])
def test_out_of_range_decode_settings_are_refused_with_one_line(tiny_run, args, key):
    result = invoke("translate", tiny_run, *args, input="seven\n")
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert key in result.stderr and ("must be" in result.stderr)


def test_translate_takes_decode_settings_only(tiny_run):
    result = invoke("translate", tiny_run, "--set", "model.hidden_size=64", input="seven\n")
    assert result.exit_code == 1 and "decode settings only" in result.stderr


def test_devices_and_pipes_are_inputs(tiny_run):
    result = invoke("translate", tiny_run, "-i", "/dev/null")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    read, write = os.pipe()  # what `-i <(command)` passes: /dev/fd/N, a pipe
    os.write(write, b"seven\n\nhalf past seven\n")
    os.close(write)
    try:
        result = invoke("translate", tiny_run, "-i", f"/dev/fd/{read}", "--beam", "2")
    finally:
        os.close(read)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 3 and result.stdout.split("\n")[1] == ""


def test_a_directory_as_input_or_output_is_one_line_before_any_work(tiny_run, tmp_path):
    result = invoke("translate", tiny_run, "-i", tmp_path)
    assert result.exit_code == 1 and f"input {tmp_path} is a directory" in result.stderr
    (tmp_path / "in.txt").write_text("seven\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    result = invoke("translate", tiny_run, "-i", tmp_path / "in.txt", "-o", tmp_path / "out")
    assert result.exit_code == 1 and f"output {tmp_path / 'out'} is a directory" in result.stderr
    assert "Translating on" not in result.stderr  # refused before the model was loaded
    assert len(result.stderr.strip().splitlines()) == 1


def test_paths_are_printed_without_markup(tiny_run, tmp_path):
    source, target = tmp_path / "in[x].txt", tmp_path / "out[x].txt"
    source.write_text("seven\n", encoding="utf-8")
    result = invoke("translate", tiny_run, "-i", source, "-o", target)
    assert result.exit_code == 0, result.output
    assert f"into {target}" in result.stderr and target.exists()


def subprocess_env() -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def translate_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lstmmt", "translate", *map(str, args), "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())


def test_a_pipe_gets_each_answer_before_the_next_line_is_written(tiny_run):
    """A generous bound: the first answer includes start-up and model loading on a loaded machine."""
    process = translate_process(tiny_run, "--beam", "2")
    try:
        process.stdin.write(b"seven\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 300)
        assert ready, "no translation of the first line while the pipe stayed open"
        first = process.stdout.readline().decode("utf-8").rstrip("\n")
        process.stdin.write(b"half past seven\n")
        process.stdin.close()
        rest = process.stdout.read().decode("utf-8").splitlines()
        assert process.wait(300) == 0, process.stderr.read()
    finally:
        process.kill()
    beam2 = Translator.load(tiny_run, device="cpu", beam_size=2)
    expected = [t.text for t in beam2.translate(["seven", "half past seven"])]
    assert [first, *rest] == expected


def open_fifo_writer(fifo: Path, deadline: float) -> int:
    """The write end of a FIFO, once its reader has opened it (never blocks past `deadline`)."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_sigterm_leaves_no_temporary_output(tiny_run, tmp_path):
    fifo, target = tmp_path / "in.fifo", tmp_path / "out.txt"
    os.mkfifo(fifo)
    process = translate_process(tiny_run, "-i", fifo, "-o", target, "--beam", "1")
    writer = open_fifo_writer(fifo, time.monotonic() + 300)
    try:
        os.write(writer, b"seven\n")  # one line translated into the temporary file, then the input stays open
        deadline = time.monotonic() + 300
        while not any(p.stat().st_size for p in tmp_path.glob(".out.txt.*.tmp")):
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
    finally:
        os.close(writer)
        process.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fifo"]


def test_checkpoints_of_one_run_ensemble_and_another_tokenizer_is_refused(tiny_run, tmp_path):
    result = invoke("translate", tiny_run, "--checkpoint", "best", "--checkpoint", "last", "--format", "jsonl",
                    input="seven\n\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] == "" for line in result.stdout.splitlines()] == [False, True]
    other = make_tiny_run(tmp_path, seed=12, steps=0)  # the same vocabulary size, another tokenizer
    (other / "checkpoints").mkdir()
    shutil.copy(tiny_run / "checkpoints/best.pt", other / "checkpoints/best.pt")
    result = invoke("translate", tiny_run, "--checkpoint", "best", "--checkpoint", other / "checkpoints/best.pt",
                    input="seven\n")
    assert result.exit_code == 1 and "whose tokenizer differs" in result.stderr, result.output


def test_evaluate_split_translates_again_for_other_options(tiny_run, tmp_path):
    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # it writes translations and a shortlist
    result = invoke("evaluate", tiny_run, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert (tiny_run / "translations/test.hyp").exists()
    result = invoke("evaluate", tiny_run, "--split", "test", "--beam", "2", "--json")
    assert result.exit_code == 0, result.output
    hyp = tiny_run / "translations/test.best.beam2.hyp"
    assert json.loads(result.stdout)["hypothesis"] == str(hyp)
    stored = {path.name: json.loads(path.read_text())["hypothesis"] for path in (tiny_run / "scores").glob("*.json")}
    assert stored == {"split-test.json": str(tiny_run / "translations/test.hyp"),
                      "split-test.best.beam2.json": str(hyp)}  # each translation keeps its own score
    result = invoke("translate", tiny_run, "-i", tiny_run / "data/test.src.txt", "-o", tmp_path / "beam2.txt",
                    "--beam", "2")
    assert result.exit_code == 0
    assert hyp.read_text(encoding="utf-8") == (tmp_path / "beam2.txt").read_text(encoding="utf-8")
    result = invoke("evaluate", tiny_run, "--split", "test", "--beam", "0")
    assert result.exit_code == 1 and "decode.beam_size" in result.stderr
    assert invoke("shortlist", tiny_run).exit_code == 0
    result = invoke("evaluate", tiny_run, "--split", "test", "--shortlist", "--quantize", "int8", "--json")
    assert result.exit_code == 0, result.output
    narrowed = tiny_run / "translations/test.best.beam5.shortlist.int8.hyp"
    assert json.loads(result.stdout)["hypothesis"] == str(narrowed)
    written = narrowed.stat().st_mtime_ns
    assert invoke("evaluate", tiny_run, "--split", "test", "--shortlist", "--quantize", "int8").exit_code == 0
    assert narrowed.stat().st_mtime_ns == written  # the same options again: the stored translation is scored
    assert invoke("shortlist", tiny_run, "--per-source", "1", "--frequent", "2").exit_code == 0
    assert invoke("evaluate", tiny_run, "--split", "test", "--shortlist", "--quantize", "int8").exit_code == 0
    assert narrowed.stat().st_mtime_ns > written  # a rewritten shortlist makes the old translation stale


@pytest.fixture()
def config_reads(monkeypatch) -> list[Path]:
    """The config.yaml files read with Config.load from now on, in order."""
    from lstmmt.config import Config

    read: list[Path] = []
    load = Config.load.__func__

    def counted(cls, path):
        read.append(Path(path))
        return load(cls, path)

    monkeypatch.setattr(Config, "load", classmethod(counted))
    return read


@pytest.mark.parametrize("command", [
    ["translate", "-i", "{src}", "-o", "{out}/out.txt", "--beam", "3"],
    ["score", "--src", "{src}", "--tgt", "{src}", "-o", "{out}/scores.txt"],
    ["plot-attention", "seven", "-o", "{out}/attention.png", "--beam", "3"],
    ["evaluate", "--split", "test", "--beam", "3"],
], ids=lambda command: command[0])
def test_a_command_reads_the_run_config_once(tiny_run, tmp_path, config_reads, command):
    run = shutil.copytree(tiny_run, tmp_path / "run")  # evaluate writes its translation into the run
    args = [arg.format(src=run / "data/test.src.txt", out=tmp_path) for arg in command]
    result = invoke(args[0], run, *args[1:])
    assert result.exit_code == 0, result.output
    assert config_reads == [run / "config.yaml"]


def test_serve_reads_the_run_config_once_and_serves_its_decode_settings(tiny_run, config_reads, monkeypatch):
    from lstmmt.serve import startup

    served = {}
    monkeypatch.setattr(startup, "serve",
                        lambda translator, model, *args: served.update(translator=translator, model=model))
    result = invoke("serve", tiny_run, "--port", "0", "--beam", "3", "--set", "decode.max_len_a=1.2")
    assert result.exit_code == 0, result.output
    assert config_reads == [tiny_run / "config.yaml"]
    decode = served["translator"].decode
    assert (decode.beam_size, decode.max_len_a, served["model"].source, served["model"].target) == (3, 1.2, "en", "de")
