"""The GPU check behind benchmarks/gpu_check.sh: every GPU figure in one run.

Parts, in order, each a subprocess with its own timeout (and all within --budget seconds, so
one part that hangs cannot eat the others' time):
  cuda_tests     pytest -m cuda tests/test_cuda.py (pass/fail counts, failures' names)
  preprocess     Multi30k en-de into benchmarks/.cache/m30k-8k (reused when there)
  train_bf16,    benchmarks/train_speed.py --device cuda in bf16 and fp32 for the comparison
  train_fp32     model at --batch-tokens, with its compute efficiency against the GPU's
                 measured fp32 (TF32) and bf16 matmul peaks
  limit          benchmarks/lstm_limit.py: the plain-PyTorch fused step at the same number
                 of sentences and mean lengths as train_bf16's batches, bf16 and fp32
  multi30k       lstmmt train with the Multi30k recipe's config, --max-time 3m (less if the
                 budget is short), validation every 30 s, on the GPU
  bleu           lstmmt evaluate --split test (test_2016_flickr, beam 5) of that run
  translate      benchmarks/translate_speed.py on that run: beam 1 and 5, 10,000 lines

Prints one JSON object on stdout: the machine (GPU, torch, CUDA), and per part its status
(ok, failed, timeout, skipped), wall seconds and result or error. Progress goes to stderr,
each part's own output to benchmarks/.cache/gpu_check/PART.log. Without a CUDA device it
prints {"status": "no CUDA device", ...} and exits 0. Exit status 0 unless the check itself
breaks: failures are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import CACHE, DEFAULT_DATA, REPO, emit, log, machine

WORK = CACHE / "gpu_check"
RECIPE_SETS = ["train.valid_every=1000000", "train.valid_every_time=30s", "train.log_every=100"]
"""Laid over recipes/multi30k/config.yaml for the capped GPU training: validation by time, not
every 400 steps (the recipe's CPU-sized interval would validate every few seconds)."""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--budget", type=float, default=465.0,
                    help="seconds for all parts together (8 minutes less start-up)")
    ap.add_argument("--train-minutes", type=float, default=3.0, help="cap of the Multi30k training")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="training batch for train_speed and the recipe run")
    ap.add_argument("--lines", type=int, default=10_000, help="translate_speed input lines")
    ap.add_argument("--parts", default="", help="comma-separated subset of the parts (default: all)")
    return ap.parse_args()


class Part:
    """One subprocess with a timeout; its stdout's JSON (or pytest's report) becomes the result."""

    def __init__(self, check: Check, name: str) -> None:
        self.check, self.name = check, name
        self.log_path = WORK / f"{name}.log"

    def run(self, cmd: list[str], timeout: float, parse: Callable[[str], Any] = json.loads) -> Any:
        timeout = min(timeout, self.check.left())
        if timeout < 5:
            raise Skipped(f"budget spent ({self.check.args.budget:.0f} s)")
        log(f"{self.name}: {' '.join(map(str, cmd))} (timeout {timeout:.0f} s)")
        with open(self.log_path, "w") as err:
            proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=self.check.env, cwd=REPO, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the whole group: pytest's and torchrun's children too
                proc.communicate()
                raise TimedOut(f"timed out after {timeout:.0f} s; {self.log_path}: {self.tail()}") from None
        if proc.returncode != 0 and parse is json.loads:
            raise RuntimeError(f"exit {proc.returncode}; {self.log_path}: {self.tail()}")
        return parse(out) if parse is not json.loads else parse(out[out.index("{"):])

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Skipped(Exception):
    pass


class TimedOut(Exception):
    pass


class Failed(Exception):
    """A part that ran to the end with a failing result (kept in the JSON beside the error)."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.start = args, time.monotonic()
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                        PYTHONUNBUFFERED="1")
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def part(self, name: str, body: Callable[[Part], Any], needs: tuple[str, ...] = ()) -> None:
        wanted = self.args.parts.split(",") if self.args.parts else None
        if wanted is not None and name not in wanted:
            return
        start = time.monotonic()
        missing = [n for n in needs if n in self.results and self.results[n]["status"] != "ok"]
        try:
            if missing:
                raise Skipped(f"needs {', '.join(missing)}")
            entry = {"status": "ok", "result": body(Part(self, name))}
        except Skipped as exc:
            entry = {"status": "skipped", "reason": str(exc)}
        except TimedOut as exc:
            entry = {"status": "timeout", "error": str(exc)}
        except Failed as exc:
            entry = {"status": "failed", "error": str(exc), "result": exc.result}
        except Exception as exc:  # noqa: BLE001 (a part's failure is reported, and the next part runs)
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.monotonic() - start, 1)
        log(f"{name}: {entry['status']} in {entry['seconds']} s")
        self.results[name] = entry

    def value(self, name: str, *keys: str) -> Any:
        value: Any = self.results.get(name, {}).get("result")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def pytest_report(junit: Path) -> Callable[[str], Any]:
    def parse(_: str) -> dict[str, Any]:
        if not junit.exists():
            raise RuntimeError("pytest wrote no report")
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        cases = suite.findall("testcase")
        problems = [(c, c.find("failure") if c.find("failure") is not None else c.find("error")) for c in cases]
        failed = [f"{c.get('name')}: {problem.get('message', '')[:300]}"
                  for c, problem in problems if problem is not None]
        skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
        result = {"tests": len(cases), "passed": len(cases) - len(failed) - len(skipped), "failed": failed,
                  "skipped": skipped, "seconds": round(float(suite.get("time", 0)), 1)}
        if failed or not cases:
            raise Failed(f"{len(failed)} of {len(cases)} cuda tests failed", result)
        return result

    return parse


def main() -> None:
    args = parse_args()
    import torch

    WORK.mkdir(parents=True, exist_ok=True)
    info = {"benchmark": "gpu_check", "torch": torch.__version__, "repo": str(REPO), "data_dir": str(args.data_dir)}
    if not torch.cuda.is_available():
        emit({**info, "status": "no CUDA device", "cuda": False, "machine": machine(),
              "note": "PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); nothing was measured"})
        return
    info |= {"status": "ran", "cuda": True, "gpu": torch.cuda.get_device_name(0),
             "gpu_count": torch.cuda.device_count(), "cuda_version": torch.version.cuda,
             "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False),
             "machine": machine("cuda"), "budget_s": args.budget}
    check = Check(args)
    py = sys.executable
    bench = REPO / "benchmarks"
    run_base = CACHE / "m30k-8k"
    recipe_run = WORK / "m30k-recipe"

    junit = WORK / "cuda_tests.xml"
    junit.unlink(missing_ok=True)
    cuda_tests = [py, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider",
                  f"--junitxml={junit}"]
    check.part("cuda_tests", lambda p: p.run(cuda_tests, 180, pytest_report(junit)))

    def preprocess(p: Part) -> Any:
        code = ("import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import json; "
                "from common import ensure_preprocessed; "
                f"run = ensure_preprocessed(Path({str(run_base)!r}), Path({str(args.data_dir)!r})); "
                "print(json.dumps({'run': str(run)}))")
        return p.run([py, "-c", code], 120)

    check.part("preprocess", preprocess)

    speed = [py, bench / "train_speed.py", "--device", "cuda", "--run", run_base, "--data-dir", args.data_dir,
             "--set", f"train.batch_tokens={args.batch_tokens}"]
    for precision in ("bf16", "fp32"):
        check.part(f"train_{precision}", lambda p, precision=precision: summarise_speed(
            p.run([*speed, "--set", f"train.precision={precision}"], 90)), needs=("preprocess",))

    def limit(p: Part) -> Any:
        shape = check.value("train_bf16", "batch_shape") or check.value("train_fp32", "batch_shape")
        if not shape:
            raise Skipped("needs the batch shape of train_bf16 or train_fp32")
        return p.run([py, bench / "lstm_limit.py", "--device", "cuda", "--styles", "fused", "--dtypes", "bf16,fp32",
                      "--sentences", shape["sentences"], "--src-len", shape["src_len"], "--tgt-len", shape["tgt_len"]],
                     60)

    check.part("limit", limit)

    def multi30k(p: Part) -> Any:
        minutes = min(args.train_minutes, (check.left() - 120) / 60)  # leave time for start-up, BLEU and translation
        if minutes < 0.5:
            raise Skipped("budget too short for training")
        shutil.rmtree(recipe_run, ignore_errors=True)
        recipe_run.mkdir(parents=True)
        shutil.copy2(run_base / "config.yaml", recipe_run / "config.yaml")
        for folder in ("tokenizer", "data"):
            shutil.copytree(run_base / folder, recipe_run / folder)
        sets = [*RECIPE_SETS, f"train.batch_tokens={args.batch_tokens}"]
        cmd = [py, "-m", "lstmmt", "train", recipe_run, "--config", REPO / "recipes/multi30k/config.yaml",
               "--max-time", f"{minutes * 60:.0f}s", "--device", "cuda", *[x for s in sets for x in ("--set", s)]]
        p.run(cmd, minutes * 60 + 90, parse=lambda out: None)
        summary_path = recipe_run / "train.json"
        if not summary_path.exists():
            raise RuntimeError(f"training did not finish; {p.log_path}: {p.tail()}")
        summary = json.loads(summary_path.read_text())
        valid = [json.loads(line) for line in (recipe_run / "logs/metrics.jsonl").read_text().splitlines()]
        speeds = [r["tgt_tokens_per_s"] for r in valid if r["event"] == "train"]
        return {"max_time_s": round(minutes * 60), "overrides": sets, "summary": summary,
                "valid_bleu_curve": [[r["step"], round(r["elapsed"]), round(r["bleu"], 2)]
                                     for r in valid if r["event"] == "valid"],
                "median_tgt_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None}

    check.part("multi30k", multi30k, needs=("preprocess",))

    def bleu(p: Part) -> Any:
        scores = p.run([py, "-m", "lstmmt", "evaluate", recipe_run, "--split", "test", "--json", "--device", "cuda",
                        "--checkpoint", "best"], 90)
        return {"test": "test_2016_flickr", "bleu": scores["bleu"], "chrf": scores["chrf"],
                "signature": scores["signatures"]["bleu"]}

    check.part("bleu", bleu, needs=("multi30k",))

    def translate(p: Part) -> Any:
        result = p.run([py, bench / "translate_speed.py", "--run", recipe_run, "--device", "cuda",
                        "--lines", args.lines, "--beams", "1,5", "--data-dir", args.data_dir], 150)
        return {"lines": result["lines"], "startup_s": result.get("startup_s"), "beams": result["beams"]}

    check.part("translate", translate, needs=("multi30k",))

    emit({**info, "total_s": round(time.monotonic() - check.start, 1), "parts": check.results,
          "summary": summary(check)})


def summarise_speed(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of a train_speed.py result worth keeping, and the batch shape for the limit probe."""
    sentences = result["sentences_per_s"] / result["steps_per_s"]
    seconds = result["seconds"]
    tokens = {side: result[f"{side}_tokens_per_s"] * seconds for side in ("src", "tgt")}
    total_sentences = result["sentences_per_s"] * seconds
    keep = ("precision_run", "parameters", "steps", "tgt_tokens_per_s", "src_tokens_per_s", "steps_per_s",
            "tgt_tokens_per_step", "padding_share", "collate_share", "peak_gpu_mb", "mean_train_loss", "efficiency")
    return {**{k: result.get(k) for k in keep}, "batch_tokens": result["config"]["batch_tokens"],
            "batch_shape": {"sentences": round(sentences), "src_len": max(1, round(tokens["src"] / total_sentences)),
                            "tgt_len": max(1, round(tokens["tgt"] / total_sentences))}}


def summary(check: Check) -> dict[str, Any]:
    """The headline figures, with lstmmt's training speed against the plain-PyTorch limit."""
    out: dict[str, Any] = {"parts_ok": sorted(n for n, r in check.results.items() if r["status"] == "ok"),
                           "parts_not_ok": sorted(n for n, r in check.results.items() if r["status"] != "ok")}
    limits = {row["dtype"]: row for row in check.value("limit", "results") or []}
    for precision in ("bf16", "fp32"):
        mine = check.value(f"train_{precision}", "tgt_tokens_per_s")
        if mine:
            out[f"train_{precision}_tgt_tokens_per_s"] = mine
            out[f"train_{precision}_efficiency"] = check.value(f"train_{precision}", "efficiency", "efficiency")
        if mine and precision in limits:
            out[f"limit_{precision}_tgt_tokens_per_s"] = limits[precision]["tgt_tokens_per_s"]
            out[f"train_{precision}_vs_limit"] = round(mine / limits[precision]["tgt_tokens_per_s"], 3)
    if bleu := check.value("bleu", "bleu"):
        out["test_2016_flickr_bleu"] = bleu
    for beam, figures in (check.value("translate", "beams") or {}).items():
        out[f"beam{beam}_sentences_per_s"] = figures.get("sentences_per_s")
    return out


if __name__ == "__main__":
    main()
