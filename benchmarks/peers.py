"""lstmmt side by side with OpenNMT-py 3.5.1 and JoeyNMT 2.3.0 on the same data, model size and threads.

What is the same for every system:
  * data: Multi30k en-de train (the 28,997 pairs lstmmt keeps), segmented by one joint 8k
    unigram SentencePiece model (lstmmt's, from the preprocessed run): the peers get the
    pieces as space-separated tokens and a vocabulary file of the same pieces, so all three
    see identical token sequences and an 8,000-entry vocabulary;
  * model: embeddings 256 shared by source and target, BiLSTM encoder 1 layer x 256 per
    direction, one 512 decoder layer, Luong (general) attention, bridge, untied 512x8000
    output layer, dropout 0.3; lstmmt and OpenNMT-py each without input feeding (`lstmmt`,
    `opennmt-noif`: one LSTM call over the whole target) and with it (`lstmmt-if`,
    `opennmt`, its default), JoeyNMT with it (its only decoder); and lstmmt without it under
    bf16 autocast (`lstmmt-bf16`, training and search; every other system runs fp32);
  * training: Adam, constant lr 1e-3 (no warm-up), label smoothing 0.1, clip norm 1.0,
    4096-token batches, loss normalised by target tokens, one step logged per step;
  * threads: OMP_NUM_THREADS=MKL_NUM_THREADS=--threads (2), CPU;
  * translation: test_2016_flickr (1,000 lines), beam 5, a 1,600-source-token batch budget
    (lstmmt's default decode.batch_tokens 8000 / beam 5), outputs capped at about 100 tokens.

The `ratios` part compares like with like first (LIKE_WITH_LIKE: the same architecture and
precision on both sides), then each toolkit's fastest setting that ran (BEST_SETTINGS).

Each system trains once for --train-steps steps (default 60). Training throughput is
read from the system's own per-step log over the window of steps W+1..W+N (--warmup,
--steps), timed by the log timestamps, so start-up and data loading are excluded.
Translation uses the checkpoint at the end of that run. Compare translation speeds only
between models trained long enough to give outputs of plausible length (--train-steps
1000; a 60-step model emits a few words a line): mean output length and BLEU (on the
first copy) are reported so this can be checked. The input is the test set repeated
--repeat times (10,000 lines), timed as wall time of the translate command minus the wall
time of the same command on a one-line input (start-up and model loading), plus each
system's own report where it has one (OpenNMT-py -report_time, JoeyNMT "Generation took").

Everything is cached under --work (default benchmarks/.cache/peers): the virtualenvs (a
marker file records the recipe that built each), the exported data, each system's trained
model and measurements. A rerun reuses them and reprints the JSON; --remeasure trains and
translates again (the venvs and data stay), --translate-only keeps the trained models and
translates again, --systems picks a subset.

With --device cuda every system trains and translates on the first GPU (lstmmt
`--device cuda`, OpenNMT-py `gpu_ranks: [0]` / `-gpu 0`, JoeyNMT `use_cuda`); this path has
not been run on a GPU yet. The peers' virtualenvs get torch from
pip (--torch pip, torch==2.13.0) or see this interpreter's torch (--torch current: a venv with
--system-site-packages, no torch download; for GPU machines without a package registry, whose
torch is the CUDA build already there). --torch auto, the default, is `current` with --device
cuda when this interpreter's torch is a CUDA build, else `pip` as before. The peers themselves
still come from pip (PIP_INDEX_URL / PIP_FIND_LINKS point it at a mirror or a wheel folder).

    python benchmarks/peers.py > peers.json
    python benchmarks/peers.py --systems lstmmt-bf16,opennmt --train-steps 1000 --remeasure
    python benchmarks/peers.py --systems lstmmt-bf16,opennmt --train-steps 1000 --translate-only
    python benchmarks/peers.py --systems lstmmt,opennmt-noif --train-steps 300 --translate-only \
        --variants shortlist,int8

--variants also translates with lstmmt's shortlist and/or int8 options on the same model, by
the same method (`translate:VARIANT` in its results; ratios against the like-with-like peer).

--model NAME=PATH[::EXTRA ARGS] (repeatable) also times an lstmmt model trained elsewhere, a
run directory or a release folder written by `lstmmt export`, in the same run, by the same
method and input as the systems' translations (the test set repeated --repeat times, less the
one-line command; BLEU on the first copy, mean output length), with lstmmt's thread settings:

    lstmmt translate PATH -i INPUT -o OUTPUT --device DEVICE EXTRA ARGS

EXTRA ARGS are split like a shell line and come last, so they override --device; everything
else (beam, checkpoint, precision, shortlist, int8, batch size) is PATH's own decode setting
unless they name it. Results go to results.models.NAME (`translate` as for a system, its
`beam` the --beam of EXTRA ARGS, else PATH's decode.beam_size), and
ratios.models_translate_sentences_per_s holds each model's sentences/s over every other
model's and over every system's main translation that ran (`student/opennmt-noif`,
`student/teacher`). A model's measurement is cached like a system's, keyed by the settings,
its arguments and its files' sizes and times; --remeasure and --translate-only translate it
again. --systems '' measures the models alone:

    python benchmarks/peers.py --systems lstmmt,opennmt-noif --train-steps 1000 --translate-only \
        --model "teacher=runs/t::--checkpoint averaged --beam 5 --precision fp32" \
        --model "student=runs/s/release::--beam 1"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from common import (
    CACHE,
    DEFAULT_DATA,
    TRANSLATE_VARIANTS,
    emit,
    ensure_preprocessed,
    ensure_shortlist,
    exit_on_sigterm,
    log,
    lstmmt_cmd,
    machine,
    read_test_source,
    run_measured,
    thread_env,
)

SYSTEMS = ("lstmmt", "lstmmt-bf16", "lstmmt-if", "opennmt", "opennmt-noif", "joeynmt")
LIKE_WITH_LIKE = {
    # the same architecture and precision (fp32) on both sides
    "without_input_feeding": ("lstmmt", "opennmt-noif"),
    "with_input_feeding": ("lstmmt-if", "opennmt"),
    "with_input_feeding_joeynmt": ("lstmmt-if", "joeynmt"),
}
BEST_SETTINGS = {"lstmmt": ("lstmmt-bf16", "lstmmt", "lstmmt-if"), "opennmt": ("opennmt-noif", "opennmt")}
"""Each toolkit's candidates for its best-setting row: the fastest that ran (bf16 needs a CPU with bf16 units)."""
TORCH_SPEC = "torch==2.13.0"
RECIPES = {
    # OpenNMT-py 3.5.1 pins torch<2.3: install it without dependencies next to torch 2.13,
    # plus what it imports (spacy and fasttext are imported eagerly).
    "opennmt": [["OpenNMT-py==3.5.1", "--no-deps"],
                ["configargparse", "pyyaml", "sacrebleu", "sentencepiece", "six", "pyonmttok", "pyahocorasick",
                 "rapidfuzz", "fasttext-wheel", "spacy"]],
    # JoeyNMT 2.3.0 misses importlib_metadata in its requirements; sentencepiece 0.2.0 has wheels for 3.11.
    "joeynmt": [["joeynmt==2.3.0", "importlib_metadata", "sentencepiece==0.2.0"]],
}
PEER_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # OpenNMT-py 3.5.1 checkpoints hold pickled options
ENCODER_LAYERS = 1
"""OpenNMT-py's decoder without input feeding takes the encoder's final states as its own, so
it needs as many encoder layers as decoder layers (a 2-layer encoder fails with "Expected
hidden[0] size (1, B, 512), got [2, B, 512]"): one of each for every system."""
TRAINING_SETTINGS = ("train_steps", "warmup", "steps", "threads", "device")
"""What --translate-only needs to match to reuse a trained model."""
MAX_OUTPUT = 100
TEST_BATCH_TOKENS = 1600
Command = tuple[list[str], Path | None, Path | None]
"""A translate command, the file to feed its stdin (or None) and the file its stdout goes to (or None)."""


class ModelSpec(NamedTuple):
    """One --model NAME=PATH[::EXTRA ARGS]: an lstmmt run directory or release to translate with."""

    name: str
    path: Path
    extra: list[str]


def parse_model(text: str) -> ModelSpec:
    """`NAME=PATH[::EXTRA ARGS]` as a ModelSpec (EXTRA ARGS split like a shell line); ValueError when malformed."""
    head, _, extra = text.partition("::")
    name, equals, path = head.partition("=")
    name, path = name.strip(), path.strip()
    if not equals or not path:
        raise ValueError(f"--model {text!r}: expected NAME=PATH[::EXTRA ARGS]")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"--model {text!r}: NAME must be letters, digits, '.', '_' or '-'")
    if name in SYSTEMS or name == "models":
        raise ValueError(f"--model {text!r}: NAME {name!r} is taken by a system; choose another")
    if not Path(path).is_dir():
        raise ValueError(f"--model {text!r}: {path} is not a folder (a run directory or a release)")
    return ModelSpec(name, Path(path).resolve(), shlex.split(extra))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=CACHE / "peers", help="cache folder: venvs, data, models, results")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {', '.join(SYSTEMS)} ('': none, with --model)")
    ap.add_argument("--train-steps", type=int, default=60, help="length of each training run (the translation model)")
    ap.add_argument("--warmup", type=int, default=5, help="steps before the timed window")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where every system trains and translates (cuda: the first GPU)")
    ap.add_argument("--test-lines", type=int, default=0,
                    help="translate only the first N test lines (0: all 1,000; for smoke tests)")
    ap.add_argument("--repeat", type=int, default=10,
                    help="translate the test set repeated this many times (start-up amortised)")
    ap.add_argument("--torch", choices=["auto", "pip", "current"], default="auto",
                    help=f"peers' torch: pip ({TORCH_SPEC}), current (this interpreter's, no download), "
                         "auto (current for a CUDA build with --device cuda, else pip)")
    ap.add_argument("--variants", default="",
                    help="comma-separated translation variants of lstmmt to measure too, on the same model: "
                         "shortlist, int8, shortlist+int8 (the shortlist is built untimed when missing)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH[::EXTRA ARGS]",
                    help="also translate this lstmmt run directory or release by the same method "
                         "(`lstmmt translate PATH ... EXTRA ARGS`); repeatable")
    ap.add_argument("--remeasure", action="store_true", help="train and translate again (keeps venvs and data)")
    ap.add_argument("--translate-only", action="store_true",
                    help="keep the trained models and training figures; translate again")
    args = ap.parse_args()
    if args.train_steps < args.warmup + args.steps:
        ap.error("--train-steps must be at least --warmup + --steps")
    args.torch = torch_source(args.torch, args.device)
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(Lstmmt.variants):
        unknown_variants = ", ".join(sorted(set(args.variants) - set(Lstmmt.variants)))
        ap.error(f"unknown variant(s) {unknown_variants}; choose from {', '.join(Lstmmt.variants)}")
    args.systems = [name for name in args.systems.split(",") if name]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    try:
        args.model = [parse_model(text) for text in args.model]
    except ValueError as exc:
        ap.error(str(exc))
    names = [spec.name for spec in args.model]
    if len(set(names)) < len(names):
        ap.error(f"--model names must differ (got {', '.join(names)})")
    if not args.systems and not args.model:
        ap.error("nothing to measure: name --systems or give --model")
    return args


# -- load sampling ------------------------------------------------------------------------------


class LoadSampler:
    """Samples the 1-minute load average every few seconds while a command runs."""

    def __init__(self, every: float = 5.0) -> None:
        import os

        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import os

        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {"mean": round(statistics.fmean(self.samples), 2), "max": round(max(self.samples), 2)}


# -- set-up: virtualenvs and data ----------------------------------------------------------------


def torch_source(choice: str, device: str) -> str:
    """`pip` or `current` for --torch (see the module docstring)."""
    if choice != "auto":
        return choice
    if device == "cuda":
        try:
            import torch

            if torch.version.cuda and torch.cuda.is_available():
                return "current"
        except ImportError:
            pass
    return "pip"


def ensure_venv(name: str, work: Path, torch_from: str = "pip") -> Path:
    """A virtualenv with torch (from pip, or this interpreter's through system site-packages) and
    the peer, built once; returns its python."""
    venv = work / f"venv-{name}"
    python = venv / "bin" / "python"
    marker = venv / ".lstmmt-recipe.json"
    torch_spec = TORCH_SPEC if torch_from == "pip" else f"current:{sys.executable}"
    recipe = {"torch": torch_spec, "steps": RECIPES[name]}
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return python
    if venv.exists():
        shutil.rmtree(venv)
    log(f"creating {venv} ({torch_spec}, then {RECIPES[name]}); pip output in {venv}.log")
    install_log = work / f"venv-{name}.log"
    install_log.parent.mkdir(parents=True, exist_ok=True)
    with open(install_log, "w") as out:
        def pip(*packages: str) -> None:
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *packages]
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                tail = [line for line in install_log.read_text().splitlines() if "Location 'file:" not in line][-15:]
                raise RuntimeError(f"pip install {' '.join(packages)} failed (exit {done.returncode}):\n"
                                   + "\n".join(tail))

        system_site = ["--system-site-packages"] if torch_from == "current" else []
        subprocess.run([sys.executable, "-m", "venv", *system_site, str(venv)], check=True, stdout=out,
                       stderr=subprocess.STDOUT)
        if torch_from == "pip":
            pip(TORCH_SPEC)
        else:  # the interpreter's torch, seen through system site-packages: check it is the one
            subprocess.run([str(python), "-c", "import torch, sys; sys.exit(torch.__file__ is None)"], check=True,
                           stdout=out, stderr=subprocess.STDOUT)
        for step in RECIPES[name]:
            pip(*step)
    marker.write_text(json.dumps(recipe))
    return python


def export_data(run: Path, data_dir: Path, out: Path, test_lines: int = 0) -> dict[str, Any]:
    """The run's encoded splits as space-separated SentencePiece pieces, the piece vocabulary,
    and the raw test source/reference (what lstmmt translates and what BLEU compares to)."""
    import sentencepiece as spm

    from lstmmt.encoded import EncodedSide
    from lstmmt.rundir import RunDir

    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    rundir = RunDir(run)
    sp = spm.SentencePieceProcessor(model_file=str(rundir.tokenizer_dir / "spm.model"))
    counts = {}
    for split in ("train", "valid", "test"):
        for side, lang in (("src", "en"), ("tgt", "de")):
            encoded = EncodedSide.open(rundir, split, side)
            count = min(len(encoded), test_lines) if split == "test" and test_lines else len(encoded)
            with open(out / f"{split}.sp.{lang}", "w", encoding="utf-8") as handle:
                for i in range(count):
                    handle.write(" ".join(sp.id_to_piece(int(t)) for t in encoded[i]) + "\n")
            counts[f"{split}.{lang}"] = count
    # Pieces 0-3 are lstmmt's <pad> <unk> <s> </s>; each peer adds its own four specials.
    pieces = "".join(sp.id_to_piece(i) + "\n" for i in range(4, sp.get_piece_size()))
    (out / "vocab.txt").write_text(pieces, encoding="utf-8")
    test_src = read_test_source(data_dir)[: counts["test.en"]]
    test_ref = rundir.text("test", "tgt").read_text(encoding="utf-8").splitlines()[: counts["test.en"]]
    (out / "test.raw.en").write_text("\n".join(test_src) + "\n", encoding="utf-8")
    (out / "test.ref.de").write_text("\n".join(test_ref) + "\n", encoding="utf-8")
    one = " ".join(sp.encode("A man is riding a bicycle.", out_type=str))
    (out / "one.sp.en").write_text(one + "\n", encoding="utf-8")
    (out / "one.raw.en").write_text("A man is riding a bicycle.\n", encoding="utf-8")
    meta = {"pieces": sp.get_piece_size(), "lines": counts}
    done.write_text(json.dumps(meta))
    return meta


def detok(line: str) -> str:
    return "".join(line.split()).replace("\u2581", " ").strip()


# -- log parsing: (step, seconds, target tokens of that step) -------------------------------------


def _stamp(text: str, fmt: str = "%Y-%m-%d %H:%M:%S,%f") -> float:
    return datetime.strptime(text, fmt).timestamp()


def steps_opennmt(log_text: str) -> list[tuple[int, float, float]]:
    rows = []
    pattern = re.compile(r"\[(\S+ \S+) INFO\] Step\s+(\d+)/\s*\d+;.*?bsz:\s*([\d.]+)/\s*([\d.]+)/")
    for match in pattern.finditer(log_text):
        # report_every 1: bsz = the batch
        rows.append((int(match.group(2)), _stamp(match.group(1)), float(match.group(4))))
    return rows


def steps_joeynmt(log_text: str) -> list[tuple[int, float, float]]:
    rows, previous = [], None
    pattern = re.compile(r"^(\S+ \S+) - INFO - joeynmt.training - Epoch\s+\d+, Step:\s+(\d+),"
                         r".*Tokens per Sec:\s+([\d.]+)", re.M)
    for match in pattern.finditer(log_text):
        stamp = _stamp(match.group(1))
        tokens = float(match.group(3)) * (stamp - previous) if previous is not None else 0.0
        rows.append((int(match.group(2)), stamp, tokens))
        previous = stamp
    return rows


def steps_lstmmt(metrics_text: str) -> list[tuple[int, float, float]]:
    rows, previous = [], None
    for line in metrics_text.splitlines():
        record = json.loads(line)
        if record.get("event") != "train":
            continue
        tokens = record["tgt_tokens_per_s"] * (record["elapsed"] - previous) if previous is not None else 0.0
        rows.append((record["step"], record["elapsed"], tokens))
        previous = record["elapsed"]
    return rows


def window(rows: list[tuple[int, float, float]], warmup: int, steps: int) -> dict[str, Any]:
    """Target tokens/s and steps/s over steps warmup+1 .. warmup+steps."""
    by_step = {step: (t, tokens) for step, t, tokens in rows}
    first, last = warmup, warmup + steps
    if first not in by_step or last not in by_step:
        has = f"{min(by_step, default=None)}..{max(by_step, default=None)}"
        raise RuntimeError(f"log lacks step {first} or {last} (has {has})")
    seconds = by_step[last][0] - by_step[first][0]
    tokens = sum(by_step[s][1] for s in range(first + 1, last + 1) if s in by_step)
    return {"window_steps": [first + 1, last], "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 4),
            "tgt_tokens_per_s": round(tokens / seconds, 1), "tgt_tokens_per_step": round(tokens / steps, 1)}


# -- the systems -----------------------------------------------------------------------------------


class System:
    """One toolkit: how to train it, where its log is, how to translate with it."""

    name: str

    def __init__(self, args: argparse.Namespace, data: Path, base_run: Path) -> None:
        self.args, self.data, self.base_run = args, data, base_run
        self.dir = args.work / "runs" / self.name
        self.env = thread_env(args.threads) | PEER_ENV

    def prepare(self) -> None: ...

    venv: str | None = None
    """The RECIPES entry of the virtualenv this system runs in (None: this interpreter)."""

    def reuse(self) -> None:
        """Set up to translate with the model an earlier run of this script trained."""
        self.python = ensure_venv(self.venv, self.args.work, self.args.torch) if self.venv else None

    def fresh_dir(self) -> None:
        """An empty working folder for this system (a remeasure starts from nothing)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def train_cmd(self) -> list[str]: ...

    def steps(self) -> list[tuple[int, float, float]]: ...

    variants: dict[str, list[str]] = {}
    """Translation variants measured with --variants: their extra translate options."""

    def translate_cmd(self, source: Path, output: Path, extra: Sequence[str] = ()) -> Command:
        """The command (with the `extra` options of a variant), the file to feed its stdin (or
        None) and the file its stdout goes to (or None)."""
        ...

    def prepare_variant(self, variant: str) -> None:
        """What a variant needs besides the trained model (built untimed)."""

    def reported_translate_s(self, log_text: str) -> float | None:
        return None

    @property
    def beam(self) -> int | None:
        """The beam size its translate command searches with."""
        return self.args.beam

    def source_for(self, kind: str) -> Path:
        return self.data / ("test.sp.en" if kind == "test" else "one.sp.en")

    def hypotheses(self, output: Path) -> list[str]:
        return [detok(line) for line in output.read_text(encoding="utf-8").splitlines()]

    def parameters(self, train_log: str) -> int | None:
        return None


class Lstmmt(System):
    name = "lstmmt"
    input_feeding = False
    precision = "fp32"

    def prepare(self) -> None:
        self.fresh_dir()
        shutil.copy2(self.base_run / "config.yaml", self.dir / "config.yaml")
        for folder in ("tokenizer", "data"):
            shutil.copytree(self.base_run / folder, self.dir / folder)

    def train_cmd(self) -> list[str]:
        steps = self.args.train_steps
        sets = [
            "model.embed_size=256", "model.hidden_size=512", f"model.encoder_layers={ENCODER_LAYERS}",
            "model.decoder_layers=1",
            "model.attention=luong", f"model.input_feeding={str(self.input_feeding).lower()}", "model.dropout=0.3",
            "model.tie_embeddings=false",  # an untied 512x8000 output layer, as the peers have
            "train.batch_tokens=4096", "train.lr=0.001", "train.lr_schedule=constant", "train.warmup_steps=0",
            "train.label_smoothing=0.1", "train.clip_norm=1.0", "train.log_every=1", f"train.valid_every={steps}",
            f"train.threads={self.args.threads}", f"train.device={self.args.device}", "train.seed=1",
            f"train.precision={self.precision}",
        ]
        return lstmmt_cmd("train", str(self.dir), "--max-steps", str(steps), "--restart",
                          *[x for s in sets for x in ("--set", s)])

    def steps(self) -> list[tuple[int, float, float]]:
        return steps_lstmmt((self.dir / "logs" / "metrics.jsonl").read_text())

    def source_for(self, kind: str) -> Path:
        return self.data / ("test.raw.en" if kind == "test" else "one.raw.en")

    variants = {name: flags for name, flags in TRANSLATE_VARIANTS.items() if flags}

    def translate_cmd(self, source: Path, output: Path, extra: Sequence[str] = ()) -> Command:
        return lstmmt_cmd("translate", str(self.dir), "-i", str(source), "-o", str(output),
                          "--beam", str(self.args.beam), "--batch-tokens", str(TEST_BATCH_TOKENS * self.args.beam),
                          "--checkpoint", "last",
                          "--device", self.args.device, "--precision", self.precision, *extra), None, None

    def prepare_variant(self, variant: str) -> None:
        """The shortlist variants need RUN/shortlist.npz: `lstmmt shortlist` with its defaults, once."""
        if "shortlist" in variant:
            ensure_shortlist(self.dir, self.args.threads)

    def hypotheses(self, output: Path) -> list[str]:
        return output.read_text(encoding="utf-8").splitlines()

    def parameters(self, train_log: str) -> int | None:
        match = re.search(r"Model: ([\d,]+) parameters", train_log)
        return int(match.group(1).replace(",", "")) if match else None


class LstmmtIF(Lstmmt):
    name = "lstmmt-if"
    input_feeding = True


class LstmmtBF16(Lstmmt):
    """The fused decoder under bf16 autocast (the CPU's AVX512-BF16 units), in training and in search."""

    name = "lstmmt-bf16"
    precision = "bf16"
    variants = {"shortlist": ["--shortlist"]}  # int8 computes in fp32


class LstmmtModel(Lstmmt):
    """An lstmmt model trained elsewhere (--model): a run directory or a release, translated
    with its own decode settings and the extra arguments; its outputs go to WORK/models/NAME."""

    variants: dict[str, list[str]] = {}

    def __init__(self, args: argparse.Namespace, data: Path, base_run: Path, spec: ModelSpec) -> None:
        self.name, self.spec = spec.name, spec
        super().__init__(args, data, base_run)
        self.dir = args.work / "models" / spec.name

    @property
    def beam(self) -> int | None:
        """--beam of the extra arguments, else the model's decode.beam_size (None if unreadable)."""
        for i, arg in enumerate(self.spec.extra):
            if arg == "--beam" and i + 1 < len(self.spec.extra):
                return int(self.spec.extra[i + 1])
            if arg.startswith("--beam="):
                return int(arg.partition("=")[2])
        try:
            import yaml

            return int(yaml.safe_load((self.spec.path / "config.yaml").read_text())["decode"]["beam_size"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            return None

    def fingerprint(self) -> str:
        """A digest of the names, sizes and modification times of the model's files."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.spec.path.rglob("*") if p.is_file()):
            info = path.stat()
            digest.update(f"{path.relative_to(self.spec.path)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def translate_cmd(self, source: Path, output: Path, extra: Sequence[str] = ()) -> Command:
        return lstmmt_cmd("translate", str(self.spec.path), "-i", str(source), "-o", str(output),
                          "--device", self.args.device, *self.spec.extra, *extra), None, None


class OpenNMT(System):
    name = "opennmt"
    venv = "opennmt"
    input_feed = 1

    def prepare(self) -> None:
        self.python = ensure_venv(self.venv, self.args.work, self.args.torch)
        self.fresh_dir()
        config = {
            "save_data": str(self.dir), "src_vocab": str(self.data / "vocab.txt"),
            "tgt_vocab": str(self.data / "vocab.txt"),
            "share_vocab": True, "src_words_min_frequency": 0, "tgt_words_min_frequency": 0,
            "data": {"corpus_1": {"path_src": str(self.data / "train.sp.en"),
                                  "path_tgt": str(self.data / "train.sp.de")}},
            "save_model": str(self.dir / "model"), "save_checkpoint_steps": self.args.train_steps,
            "train_steps": self.args.train_steps, "valid_steps": 10**9, "report_every": 1, "seed": 1,
            "encoder_type": "brnn", "decoder_type": "rnn", "rnn_type": "LSTM", "enc_layers": ENCODER_LAYERS,
            "dec_layers": 1,
            "hidden_size": 512, "word_vec_size": 256, "share_embeddings": True, "global_attention": "general",
            "input_feed": self.input_feed, "bridge": True, "dropout": 0.3, "label_smoothing": 0.1,
            "optim": "adam", "learning_rate": 0.001, "max_grad_norm": 1.0,
            "batch_type": "tokens", "batch_size": 4096, "normalization": "tokens",
            "num_workers": 0,  # two cores: a loader process would compete with the two compute threads
            "bucket_size": 32768,  # the whole corpus in one bucket (the default fills 262,144 by re-reading it 9 times)
        }
        if self.args.device == "cuda":
            config |= {"gpu_ranks": [0], "world_size": 1}
        import yaml

        (self.dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def train_cmd(self) -> list[str]:
        return [str(self.python.parent / "onmt_train"), "-config", str(self.dir / "config.yaml")]

    def steps(self) -> list[tuple[int, float, float]]:
        return steps_opennmt((self.dir / "train.log").read_text(errors="replace"))

    def translate_cmd(self, source: Path, output: Path, extra: Sequence[str] = ()) -> Command:
        model = self.dir / f"model_step_{self.args.train_steps}.pt"
        gpu = "0" if self.args.device == "cuda" else "-1"
        return [str(self.python.parent / "onmt_translate"), "-model", str(model), "-src", str(source),
                "-output", str(output), "-beam_size", str(self.args.beam), "-batch_type", "tokens",
                "-batch_size", str(TEST_BATCH_TOKENS), "-max_length", str(MAX_OUTPUT), "-length_penalty", "avg",
                "-report_time", "-gpu", gpu], None, None

    def reported_translate_s(self, log_text: str) -> float | None:
        match = re.search(r"Total translation time \(s\): ([\d.]+)", log_text)
        return float(match.group(1)) if match else None

    def parameters(self, train_log: str) -> int | None:
        match = re.search(r"\* number of parameters: (\d+)", train_log)
        return int(match.group(1)) if match else None


class OpenNMTNoIF(OpenNMT):
    """OpenNMT-py's decoder without input feeding (`input_feed: 0`: its StdRNNDecoder runs the
    LSTM over the whole target in one call), the like-with-like peer of `lstmmt`."""

    name = "opennmt-noif"
    input_feed = 0


class JoeyNMT(System):
    name = "joeynmt"
    venv = "joeynmt"

    def prepare(self) -> None:
        self.python = ensure_venv(self.venv, self.args.work, self.args.torch)
        self.fresh_dir()
        vocab = str(self.data / "vocab.txt")
        side = lambda lang: {"lang": lang, "level": "word", "lowercase": False, "voc_file": vocab}  # noqa: E731
        config = {
            "name": "m30k_bench", "model_dir": str(self.dir / "model"), "use_cuda": self.args.device == "cuda",
            "data": {"train": str(self.data / "train.sp"), "dev": str(self.data / "valid.sp"),
                     "test": str(self.data / "test.sp"), "dataset_type": "plain", "src": side("en"), "trg": side("de")},
            "testing": {"beam_size": self.args.beam, "beam_alpha": 1.0, "batch_size": TEST_BATCH_TOKENS,
                        "batch_type": "token", "max_output_length": MAX_OUTPUT, "eval_metrics": ["bleu"],
                        "load_model": str(self.dir / "model" / "latest.ckpt")},
            "training": {
                "random_seed": 1, "optimizer": "adam", "learning_rate": 0.001,
                # a constant rate (the default scheduler fails on torch 2.13)
                "scheduling": "exponential", "decrease_factor": 1.0,
                "batch_size": 4096, "batch_type": "token", "normalization": "tokens", "label_smoothing": 0.1,
                "clip_grad_norm": 1.0, "epochs": 1000, "updates": self.args.train_steps, "logging_freq": 1,
                "validation_freq": 10**9, "early_stopping_metric": "ppl", "keep_best_ckpts": 1, "overwrite": True,
                "shuffle": True, "num_workers": 0,
            },
            "model": {
                "initializer": "xavier_uniform", "tied_embeddings": True,
                "encoder": {"type": "recurrent", "rnn_type": "lstm", "embeddings": {"embedding_dim": 256},
                            "hidden_size": 256, "bidirectional": True, "num_layers": ENCODER_LAYERS, "dropout": 0.3},
                "decoder": {"type": "recurrent", "rnn_type": "lstm", "embeddings": {"embedding_dim": 256},
                            "hidden_size": 512, "attention": "luong", "input_feeding": True, "init_hidden": "bridge",
                            "num_layers": 1, "dropout": 0.3},
            },
        }
        import yaml

        (self.dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def train_cmd(self) -> list[str]:
        return [str(self.python), "-m", "joeynmt", "train", str(self.dir / "config.yaml"), "--skip-test"]

    def steps(self) -> list[tuple[int, float, float]]:
        return steps_joeynmt((self.dir / "train.log").read_text(errors="replace"))

    def translate_cmd(self, source: Path, output: Path, extra: Sequence[str] = ()) -> Command:
        # stdin to stdout: JoeyNMT 2.3.0's `translate -o FILE` fails after decoding
        # (AttributeError: 'BaseConfig' object has no attribute 'n_best', prediction.py).
        return [str(self.python), "-m", "joeynmt", "translate", str(self.dir / "config.yaml")], source, output

    def reported_translate_s(self, log_text: str) -> float | None:
        match = re.search(r"Generation took ([\d.]+)\[sec\]", log_text)
        return float(match.group(1)) if match else None

    def parameters(self, train_log: str) -> int | None:
        match = re.search(r"Total params: (\d+)", train_log)
        return int(match.group(1)) if match else None


CLASSES: dict[str, Callable[..., System]] = {"lstmmt": Lstmmt, "lstmmt-bf16": LstmmtBF16, "lstmmt-if": LstmmtIF,
                                           "opennmt": OpenNMT, "opennmt-noif": OpenNMTNoIF, "joeynmt": JoeyNMT}


# -- measuring -------------------------------------------------------------------------------------


def measure(system: System, args: argparse.Namespace, references: list[str],
            trained: dict[str, Any] | None) -> dict[str, Any]:
    """Train (unless `trained` holds an earlier training of this system) and translate."""
    result: dict[str, Any] = {"system": system.name}
    if trained is None:
        system.prepare()
        result["train"] = measure_training(system, args)
    else:
        system.reuse()
        result["train"] = trained
    result["translate"] = measure_translation(system, args, references)
    for variant in args.variants:
        if variant in system.variants:
            system.prepare_variant(variant)
            result[f"translate:{variant}"] = measure_translation(system, args, references, variant)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def measure_model(model: LstmmtModel, args: argparse.Namespace, references: list[str]) -> dict[str, Any]:
    """Translate with a --model, in a fresh output folder, by measure_translation."""
    model.fresh_dir()
    return {"model": model.name, "path": str(model.spec.path), "extra_args": model.spec.extra,
            "translate": measure_translation(model, args, references),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def measure_training(system: System, args: argparse.Namespace) -> dict[str, Any]:
    train_log = system.dir / "train.log"
    log(f"{system.name}: training {args.train_steps} steps "
        f"(timed window: steps {args.warmup + 1}-{args.warmup + args.steps})")
    with LoadSampler() as load:
        proc = run_measured(system.train_cmd(), train_log, env=system.env)
    figures = {**window(system.steps(), args.warmup, args.steps), "run": proc, "loadavg_1min": load.summary(),
               "parameters": system.parameters(train_log.read_text(errors="replace"))}
    log(f"{system.name}: {figures['tgt_tokens_per_s']:,.0f} target tokens/s over the window "
        f"(load {figures['loadavg_1min']['mean']})")
    return figures


def measure_translation(system: System, args: argparse.Namespace, references: list[str],
                        variant: str | None = None) -> dict[str, Any]:
    """Beam search over the test set repeated --repeat times, less the same command on one line
    (with a variant's extra options, e.g. lstmmt's shortlist)."""
    import sacrebleu

    timings = {}
    suffix = f".{variant}" if variant else ""
    extra = system.variants[variant] if variant else []
    with LoadSampler() as load:
        for kind in ("one", "test"):
            output = system.dir / f"translate.{kind}{suffix}.out"
            source = system.source_for(kind)
            if kind == "test":
                source = repeated(source, args.repeat)
            cmd, stdin, stdout = system.translate_cmd(source, output, extra)
            timings[kind] = run_measured(cmd, system.dir / f"translate.{kind}{suffix}.log", env=system.env,
                                         stdin_path=stdin, stdout_path=stdout)
    test_log = (system.dir / f"translate.test{suffix}.log").read_text(errors="replace")
    outputs = system.hypotheses(system.dir / f"translate.test{suffix}.out")
    lines = len(references) * args.repeat
    if len(outputs) != lines:
        raise RuntimeError(f"{system.name}: {len(outputs)} translations for {lines} input lines")
    hyps = outputs[: len(references)]
    marginal = timings["test"]["wall_s"] - timings["one"]["wall_s"]
    reported = system.reported_translate_s(test_log)
    figures = {
        "lines": lines, "beam": system.beam,
        "wall_s": timings["test"]["wall_s"], "startup_s": timings["one"]["wall_s"],
        "sentences_per_s": round(lines / marginal, 2) if marginal > 0 else None,
        "sentences_per_s_wall": round(lines / timings["test"]["wall_s"], 2),
        "reported_translate_s": reported,
        "sentences_per_s_reported": round(lines / reported, 2) if reported else None,
        "peak_rss_mb": timings["test"]["peak_rss_mb"], "cpu_s": timings["test"]["cpu_s"],
        "mean_output_words": round(statistics.fmean(len(h.split()) for h in hyps), 2),
        "bleu": round(sacrebleu.corpus_bleu(hyps, [references]).score, 2),
        "copies_identical": all(outputs[i] == outputs[i % len(references)] for i in range(lines)),
        "loadavg_1min": load.summary(),
    }
    log(f"{system.name}{' ' + variant if variant else ''}: {figures['sentences_per_s']} sentences/s "
        f"(beam {system.beam}), "
        f"BLEU {figures['bleu']}, {figures['mean_output_words']} words/line")
    return figures


def repeated(path: Path, copies: int) -> Path:
    """`path` with its lines repeated `copies` times (written once, next to it)."""
    if copies == 1:
        return path
    out = path.with_name(f"{path.name}.x{copies}")
    if not out.exists():
        out.write_text(path.read_text(encoding="utf-8") * copies, encoding="utf-8")
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lstmmt's figures over the peer's: like with like first (LIKE_WITH_LIKE), then each
    toolkit's best setting that ran (BEST_SETTINGS)."""
    figures = {"train_tgt_tokens_per_s": ("train", "tgt_tokens_per_s"),
               "translate_sentences_per_s": ("translate", "sentences_per_s")}

    def value(name: str, part: str, key: str) -> float | None:
        return results.get(name, {}).get(part, {}).get(key) or None

    def compare(mine: str, peer: str, part: str, key: str) -> dict[str, Any] | None:
        a, b = value(mine, part, key), value(peer, part, key)
        return {"lstmmt": mine, "peer": peer, "ratio": round(a / b, 3)} if a and b else None

    out: dict[str, Any] = {}
    for label, (part, key) in figures.items():
        rows = {pair: compare(*systems, part, key) for pair, systems in LIKE_WITH_LIKE.items()}
        best = {toolkit: max((s for s in names if value(s, part, key)), key=lambda s: value(s, part, key), default=None)
                for toolkit, names in BEST_SETTINGS.items()}
        if best["lstmmt"] and best["opennmt"]:
            rows["best_settings"] = compare(best["lstmmt"], best["opennmt"], part, key)
        if part == "translate":  # lstmmt's variants against OpenNMT-py's like-with-like system
            for mine, peer in (LIKE_WITH_LIKE["without_input_feeding"], LIKE_WITH_LIKE["with_input_feeding"]):
                for variant in Lstmmt.variants:
                    a, b = value(mine, f"translate:{variant}", key), value(peer, part, key)
                    if a and b:
                        rows[f"{mine}:{variant}/{peer}"] = {"lstmmt": f"{mine} {variant}", "peer": peer,
                                                            "ratio": round(a / b, 3)}
        out[label] = {pair: row for pair, row in rows.items() if row}
    if "models" in results:
        out["models_translate_sentences_per_s"] = model_ratios(results)
    return out


def model_ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each --model's sentences/s over every other model's and every system's main translation that ran."""

    def speed(entry: dict[str, Any]) -> float | None:
        return entry.get("translate", {}).get("sentences_per_s") or None

    models = {name: speed(entry) for name, entry in results["models"].items()}
    others = {name: speed(results[name]) for name in SYSTEMS if name in results} | models
    return {f"{mine}/{other}": {"model": mine, "against": other, "ratio": round(a / b, 3)}
            for mine, a in models.items() for other, b in others.items() if other != mine and a and b}


def measure_or_reuse_model(spec: ModelSpec, args: argparse.Namespace, data: Path, base_run: Path,
                           references: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """A --model's figures: cached ones when its settings, arguments and files are unchanged (and
    neither --remeasure nor --translate-only), else measured now; a failure is reported, not fatal."""
    model = LstmmtModel(args, data, base_run, spec)
    key = {name: settings[name] for name in ("threads", "test_lines", "repeat", "device")}
    key |= {"path": str(spec.path), "extra_args": spec.extra, "files": model.fingerprint()}
    cached = args.work / "results" / "models" / f"{spec.name}.json"
    previous = json.loads(cached.read_text()) if cached.exists() else {}
    if previous.get("settings") == key and not (args.remeasure or args.translate_only):
        log(f"{spec.name}: reusing measurements of {previous.get('measured_at')} ({cached}; --remeasure to redo)")
        return previous
    try:
        result = measure_model(model, args, references) | {"settings": key}
    except Exception as exc:  # noqa: BLE001 (reported like a system that fails)
        log(f"{spec.name}: FAILED: {exc}")
        return {"model": spec.name, "path": str(spec.path), "extra_args": spec.extra, "error": str(exc),
                "settings": key}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    args.work = args.work.resolve()
    base_run = ensure_preprocessed(CACHE / "m30k-8k", args.data_dir)
    data = args.work / ("data" if not args.test_lines else f"data-test{args.test_lines}")
    meta = export_data(base_run, args.data_dir, data, args.test_lines)
    references = (data / "test.ref.de").read_text(encoding="utf-8").splitlines()
    settings = {"train_steps": args.train_steps, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                "beam": args.beam, "test_lines": args.test_lines or 1000, "repeat": args.repeat, "device": args.device}
    results: dict[str, dict[str, Any]] = {}
    for name in args.systems:
        cached = args.work / "results" / f"{name}.json"
        previous = json.loads(cached.read_text()) if cached.exists() else {}
        if previous.get("settings") == settings and not (args.remeasure or args.translate_only):
            log(f"{name}: reusing measurements of {previous.get('measured_at')} ({cached}; --remeasure to redo)")
            results[name] = previous
            continue
        trained = None
        if args.translate_only:
            if "train" in previous and all(previous["settings"].get(key) == settings[key] for key in TRAINING_SETTINGS):
                trained = previous["train"]
            else:
                log(f"{name}: no earlier training with these settings; training it")
        system = CLASSES[name](args, data, base_run)
        try:
            results[name] = measure(system, args, references, trained) | {"settings": settings}
        except Exception as exc:  # noqa: BLE001 (a peer that cannot be installed or run is reported, not fatal)
            log(f"{name}: FAILED: {exc}")
            results[name] = {"system": name, "error": str(exc), "settings": settings}
            continue
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(results[name], indent=2))
    if args.model:
        results["models"] = {spec.name: measure_or_reuse_model(spec, args, data, base_run, references, settings)
                             for spec in args.model}
    emit({
        "benchmark": "peers",
        "machine": machine(args.device),
        "settings": settings,
        "peer_torch": TORCH_SPEC if args.torch == "pip" else "this interpreter's",
        "data": {"corpus": "Multi30k en-de", "train_pairs": meta["lines"]["train.en"], "test": "test_2016_flickr",
                 "vocab": meta["pieces"]},
        "results": results,
        "ratios": ratios(results),
    })


if __name__ == "__main__":
    main()
