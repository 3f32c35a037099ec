"""Nothing lost when two commands share a run, the disk fills or a file is damaged;
every such failure is one clear line and exit status 1 (no traceback)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lstmmt import checkpoint
from lstmmt.rundir import RunDir
from tests.helpers import TINY_TRAINING, assert_one_line_error, copy_run, invoke, write_corpus

STEPS = 30  # valid_every 15, keep_checkpoints 2: step-15.pt and step-30.pt


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failures")
    write_corpus(root / "corpus", 600, 20, 5)
    return root / "corpus"


def preprocess_args(run: Path, corpus: Path, *extra: str) -> list:
    return ["preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
            "--valid", corpus / "valid", *TINY_TRAINING, *extra]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert invoke(*preprocess_args(run, corpus)).exit_code == 0
    result = invoke("train", run, "--max-steps", str(STEPS))
    assert result.exit_code == 0, result.output
    return run


def lstmmt(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmmt", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "3m"):
    if os.geteuid() != 0:
        pytest.skip("a tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)])


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` read-only: a read-only bind mount as root (root ignores permissions), else chmod."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(directory), str(directory)]).returncode != 0:
            pytest.skip("cannot bind-mount here")
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)]).returncode != 0:
            subprocess.run(["umount", str(directory)])
            pytest.skip("cannot remount read-only here")
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(directory)])
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of `directory` up to `leave` bytes."""
    free = shutil.disk_usage(directory).free
    with open(directory / "filler", "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(free - leave, 0))


# -- 1. score files never collide ----------------------------------------------------------


def test_hyp_score_never_replaces_the_split_score(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    assert invoke("evaluate", run, "--split", "valid").exit_code == 0
    split_score = json.loads((run / "scores/split-valid.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run / "data/valid.tgt.txt", other / "valid.hyp")  # a perfect "hypothesis", same base name
    assert invoke("evaluate", run, "--hyp", other / "valid.hyp", "--ref", run / "data/valid.tgt.txt").exit_code == 0
    assert json.loads((run / "scores/split-valid.json").read_text()) == split_score
    assert not (run / "scores/valid.json").exists()
    # two hypothesis files of one base name in different folders get two score files
    (tmp_path / "third").mkdir()
    shutil.copy(other / "valid.hyp", tmp_path / "third/valid.hyp")
    third = invoke("evaluate", run, "--hyp", tmp_path / "third/valid.hyp", "--ref", run / "data/valid.tgt.txt")
    assert third.exit_code == 0
    assert len(list((run / "scores").glob("hyp-valid.*.json"))) == 2


def test_named_score_refuses_to_replace_another_hypothesis(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    ref = run / "data/valid.tgt.txt"
    shutil.copy(ref, tmp_path / "a.hyp")
    shutil.copy(ref, tmp_path / "b.hyp")
    assert invoke("evaluate", run, "--hyp", tmp_path / "a.hyp", "--ref", ref, "--name", "mine").exit_code == 0
    again = invoke("evaluate", run, "--hyp", tmp_path / "a.hyp", "--ref", ref, "--name", "mine")
    assert again.exit_code == 0  # itself again
    other = invoke("evaluate", run, "--hyp", tmp_path / "b.hyp", "--ref", ref, "--name", "mine")
    assert_one_line_error(other, "mine.json", "--name")
    assert json.loads((run / "scores/mine.json").read_text())["hypothesis"] == str(tmp_path / "a.hyp")


def test_each_recipe_s_score_target_is_the_file_its_evaluate_command_writes():
    """make runs the score rule again and again if its command writes another name."""
    root = Path(__file__).resolve().parents[1]
    for recipe in ("toy", "multi30k"):
        dry = subprocess.run(["make", "-n", "-B", "-C", str(root / "recipes" / recipe), "RUN=R", "LSTMMT=lstmmt"],
                             capture_output=True, text=True, check=True).stdout
        command = next(line for line in dry.splitlines() if line.startswith("lstmmt evaluate")).split()
        value = {option: command[i + 1] for i, option in enumerate(command[:-1]) if option.startswith("--")}
        run = RunDir(Path("R"))
        if "--split" in value:
            written = run.split_score(run.translations / f"{value['--split']}.hyp")  # with the run's options
        else:
            written = run.hyp_score(Path(value["--hyp"]), value.get("--name"))
        makefile = (root / "recipes" / recipe / "Makefile").read_text()
        assert f"all: $(RUN)/{written.relative_to('R')}" in makefile, recipe


# -- 2. one writer at a time ------------------------------------------------------------------


def test_second_concurrent_train_fails_at_once_naming_the_first(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "logs/metrics.jsonl").unlink()  # appears again once the first is training, holding the lock
    # The first trains until it is told to stop, so on a fast machine it still holds the lock below.
    first = subprocess.Popen([sys.executable, "-m", "lstmmt", "train", str(run), "--restart", "--max-steps", "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 300
        while not (run / "logs/metrics.jsonl").exists():
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = lstmmt("train", run, "--max-steps", "60", timeout=120)  # waiting for the lock would time out
        assert_one_line_error(second, f"PID {first.pid}", str(run))
        restart = lstmmt("train", run, "--restart")
        assert_one_line_error(restart, f"PID {first.pid}")
        force = lstmmt(*preprocess_args(run, tmp_path / "nowhere", "--force"))
        assert_one_line_error(force, f"PID {first.pid}")
        assert first.poll() is None  # all three were refused while the first was training
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
    finally:
        if first.poll() is None:
            first.kill()
    steps = [(r["event"], r["step"]) for r in map(json.loads, (run / "logs/metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps))
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == max(step for _, step in steps)


def test_lock_of_a_killed_process_never_blocks(tmp_path):
    run = tmp_path / "run"
    script = ("import sys, time; from pathlib import Path; from lstmmt.rundir import RunDir\n"
              f"with RunDir(Path({str(run)!r})).lock('train'):\n print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"PID {holder.pid}"), RunDir(run).lock("average"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunDir(run).lock("average"):
        assert (run / ".lock").read_text().split() == [str(os.getpid()), "average"]


# -- 3. command-line limits checked before config.yaml is written -----------------------------


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_nonpositive_max_steps_is_refused_before_config_is_written(trained, tmp_path, steps):
    run = copy_run(trained, tmp_path)
    before = (run / "config.yaml").read_text()
    assert_one_line_error(invoke("train", run, "--max-steps", steps), "train.max_steps", ">= 1")
    assert (run / "config.yaml").read_text() == before


def test_more_threads_than_a_process_may_start_are_refused_before_config_is_written(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = (run / "config.yaml").read_text()
    for key in ("train.threads", "decode.workers"):
        assert_one_line_error(invoke("train", run, "--set", f"{key}=100000"), key, "[")
    assert (run / "config.yaml").read_text() == before


# -- 4. average's selection ----------------------------------------------------------------------


def test_average_refuses_a_nonpositive_count_and_takes_all_kept_when_asked_for_more(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    assert_one_line_error(invoke("average", run, "--best", "-1"), "--best", ">= 1")
    assert_one_line_error(invoke("average", run, "--last", "0"), "--last", ">= 1")
    assert not (run / "checkpoints/averaged.pt").exists()
    result = invoke("average", run, "--best", "3")  # a short recipe run may have validated only twice
    assert result.exit_code == 0
    assert "keeps 2 step checkpoints, fewer than the 3 asked for" in " ".join(result.output.split())
    assert (run / "checkpoints/averaged.pt").exists()


# -- 5. leftovers of a killed preprocess -----------------------------------------------------------


def test_next_preprocess_removes_leftovers_of_a_killed_one(trained, corpus, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / ".preprocess/data/.train-text.abc123").mkdir(parents=True)
    (run / ".preprocess/data/.train-text.abc123/train.src.txt").write_text("a copy of the corpus\n")
    (run / ".preprocess/tokenizer/.spm.xyz789").mkdir(parents=True)
    (run / ".preprocess/tokenizer/.spm.xyz789/spm.model").write_text("half a model")
    assert invoke(*preprocess_args(run, corpus, "--force")).exit_code == 0
    assert not (run / ".preprocess").exists()


# -- 6. preprocess --force keeps the run's model and train settings --------------------------------


def test_forced_preprocess_keeps_model_and_train_settings(trained, corpus, tmp_path):
    run = copy_run(trained, tmp_path)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    result = invoke("preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                    "--valid", corpus / "valid", "--set", "tokenizer.vocab_size=100", "--force")
    assert result.exit_code == 0, result.output
    assert "keeping the model, train and decode settings" in result.output
    again = yaml.safe_load((run / "config.yaml").read_text())
    assert again["model"] == settings["model"] and again["train"] == settings["train"]


# -- disk full, read-only folders ----------------------------------------------------------------------


def test_disk_full_during_preprocess_is_one_line(corpus, tmp_path):
    with small_tmpfs(tmp_path / "small", "1m") as small:
        big = tmp_path / "big"
        write_corpus(big, 30_000, 20, 5)  # its cleaned copy does not fit in 1 MB
        result = lstmmt(*preprocess_args(small / "run", big))
        assert_one_line_error(result, str(small / "run"), "No space left on device")
        assert not list((small / "run/data").glob(".train-text.*"))


def test_disk_full_during_train_keeps_the_checkpoints(trained, tmp_path):
    with small_tmpfs(tmp_path / "small") as small:
        run = copy_run(trained, small)
        fill(small, 20_000)
        result = lstmmt("train", run, "--max-steps", "45")
        assert_one_line_error(result, str(run))
        assert "basic_ios" not in result.stderr and "unexpected pos" not in result.stderr
        assert checkpoint.load(run / "checkpoints/last.pt")["step"] == STEPS  # intact


def test_full_disk_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import torch

    from lstmmt.errors import UserError

    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}, "step": 1})

    def torn(obj, f):  # what torch.save raises on a full disk
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file: "
                           "unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", torn)
    monkeypatch.setattr(checkpoint, "_disk_nearly_full", lambda directory: True)
    with pytest.raises(UserError, match="cannot write checkpoint .*last.pt.*intact"):
        checkpoint.save(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert checkpoint.load(path)["step"] == 1


def test_read_only_checkpoints_fail_before_training(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    with read_only(run / "checkpoints"):
        start = time.monotonic()
        result = lstmmt("train", run, "--max-steps", "45")
        assert_one_line_error(result, str(run / "checkpoints"))
        assert "step " not in result.stdout  # refused before the first training step
        assert time.monotonic() - start < 30
        assert_one_line_error(lstmmt("average", run, "--last", "2"), "averaged.pt")


# -- damaged files ----------------------------------------------------------------------------------


def test_corrupt_tokenizer_is_named_with_the_step_to_redo(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "tokenizer/spm.model").write_bytes(b"not a model")
    for command in (["train", run, "--max-steps", "45"], ["evaluate", run, "--split", "valid"]):
        assert_one_line_error(invoke(*command), "spm.model", "lstmmt preprocess")


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"splits": 3}'])
def test_garbage_meta_json_is_named_with_the_step_to_redo(trained, tmp_path, garbage):
    run = copy_run(trained, tmp_path)
    (run / "data/meta.json").write_text(garbage)
    for command in (["info", run], ["train", run, "--max-steps", "45"], ["evaluate", run, "--split", "valid"]):
        assert_one_line_error(invoke(*command), "meta.json", "lstmmt preprocess")


@pytest.mark.parametrize("key, value, message", [
    ("model.hidden_size", 0, ">= 2"), ("model.hidden_size", -4, ">= 2"), ("model.hidden_size", -3, ">= 2"),
    ("model.embed_size", -2, ">= 1"), ("train.patience", -1, ">= 0"), ("data.max_ratio", 0.5, ">= 1"),
    ("tokenizer.character_coverage", 0.0, "(0, 1]"), ("train.lr", float("nan"), "> 0"),
])
def test_out_of_range_config_yaml_is_one_line_naming_the_key(trained, tmp_path, key, value, message):
    run = copy_run(trained, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    config[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert_one_line_error(invoke("train", run, "--max-steps", "45"), key, message)


def test_a_file_given_as_the_run_is_named_as_such(corpus, tmp_path):
    file = corpus / "train.en"
    for command in (preprocess_args(file, corpus), ["train", file], ["average", file, "--last", "1"], ["info", file]):
        assert_one_line_error(invoke(*command), "is a file, not a run directory")


def test_a_damaged_best_checkpoint_is_written_again_by_the_next_validation(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    best = run / "checkpoints/best.pt"
    best.write_bytes(best.read_bytes()[:100])
    result = invoke("train", run, "--max-steps", str(STEPS + 15))
    assert result.exit_code == 0, result.output
    assert "best.pt is missing or damaged" in " ".join(result.output.split())
    assert checkpoint.load(best)["step"] > STEPS  # a validation after the resume wrote it again


def test_torn_last_metrics_line_is_skipped(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    with open(run / "logs/metrics.jsonl", "a") as handle:
        handle.write('{"event": "valid", "step": 4')  # killed mid-write
    assert invoke("plot", run).exit_code == 0
    assert (run / "logs/learning_curve.png").stat().st_size > 0
    result = invoke("info", run)
    assert result.exit_code == 0 and "best BLEU" in result.output


def test_missing_averaged_checkpoint_points_to_average(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    assert_one_line_error(invoke("evaluate", run, "--split", "valid", "--checkpoint", "averaged"), "lstmmt average")


def test_brackets_in_paths_survive_messages(trained, tmp_path):
    run = copy_run(trained, tmp_path, "run[x]")
    result = invoke("average", run, "--last", "2", "-o", tmp_path / "avg[x].pt")
    assert result.exit_code == 0 and "avg[x].pt" in result.output
    assert "run[x]" in invoke("info", run).output


def test_io_error_is_one_line_naming_the_path(trained, tmp_path):
    from lstmmt.errors import io_error_message

    run = copy_run(trained, tmp_path)
    (run / ".lock").mkdir()  # the lock file cannot be opened: an OSError, not a UserError
    assert_one_line_error(invoke("average", run, "--last", "1"), str(run / ".lock"))
    message = io_error_message(OSError(28, "No space left on device", "/x/y"))
    assert message == "cannot write or read /x/y: No space left on device; free some space and run again"


def test_unknown_split_names_the_splits_there_are(trained, tmp_path):
    result = lstmmt("evaluate", trained, "--split", "nosuch")
    assert_one_line_error(result, "unknown split 'nosuch'", "valid or test")
    assert "--nosuch" not in result.stdout + result.stderr
