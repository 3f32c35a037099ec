"""The evaluate step: BLEU, chrF and TER of a hypothesis file against references, saved under scores/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text

from lstmmt import checkpoint as checkpoints
from lstmmt.config import Config, DecodeConfig
from lstmmt.console import stderr
from lstmmt.errors import UserError
from lstmmt.linestream import translate_file, warn
from lstmmt.rundir import RunDir, check_output, write_output_text
from lstmmt.scoring import score
from lstmmt.translator import Translator


def read_lines(path: Path) -> list[str]:
    """The lines of a text file as translate writes them: split on "\n" only, a CRLF's "\r"
    dropped, invalid UTF-8 replaced by U+FFFD.

    str.splitlines() would also split on \f, \x85, \u2028 and the like, so one reference line
    holding such a character would count as two and every line after it would be misaligned.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as exc:  # a directory, no permission, ...
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline ending the last line starts no new one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def evaluate_files(run: RunDir, hyp: Path, ref: Path, name: str | None = None) -> dict[str, Any]:
    """Score hyp against ref into scores/NAME.json, NAME given or derived from the whole
    hypothesis path (RunDir.hyp_score). A named file holding another hypothesis's score is
    never replaced."""
    target = run.hyp_score(hyp, name)
    if name is not None:
        _refuse_other_hypothesis(target, hyp)
    return _write_score(target, hyp, ref)


def _write_score(target: Path, hyp: Path, ref: Path) -> dict[str, Any]:
    """The scores of hyp against ref, saved to target as rundir.write_output writes (a symlink
    stays a link); neither input is ever the target."""
    check_output(target, [hyp, ref])
    result = score(read_lines(hyp), read_lines(ref)) | {"hypothesis": str(hyp), "reference": str(ref)}
    write_output_text(target, json.dumps(result, indent=2) + "\n")
    return result


def _refuse_other_hypothesis(target: Path, hyp: Path) -> None:
    try:
        previous = json.loads(target.read_text(encoding="utf-8")).get("hypothesis")
    except (OSError, ValueError, AttributeError):
        return  # missing (or unreadable: nothing worth keeping)
    if previous is not None and Path(previous).resolve() != Path(hyp).resolve():
        raise UserError(f"{target} already holds the score of {previous}: choose another --name, or delete it first")


def evaluate_split(run: RunDir, split: str, checkpoint_name: str, device: str, **overrides: Any) -> dict[str, Any]:
    """Score a stored split into scores/split-NAME.json for translations/NAME.hyp (see
    `split_hypothesis`), translating its source first unless a translation with the same
    options exists and is newer than the checkpoint and shortlist it came from; `overrides`
    are decode settings (beam_size, shortlist, quantize) laid over the run's, read from its
    config once."""
    run.require_preprocessed()
    source, reference = run.text(split, "src"), run.text(split, "tgt")
    if not source.exists():
        stored = sorted(s for s in ("valid", "test") if run.text(s, "src").exists())
        if split not in ("valid", "test"):
            raise UserError(f"unknown split {split!r}: --split takes valid or test (stored in {run.root}: "
                            f"{', '.join(stored) or 'none'}), or score a file with --hyp/--ref")
        raise UserError(f"{run.root} has no stored {split} split: preprocess with --{split} PREFIX to store one, "
                        "or use --hyp/--ref")
    run_decode = Config.load(run.config).decode
    decode = run_decode.updated(**overrides)
    hyp = split_hypothesis(run, split, checkpoint_name, decode, run_decode.beam_size)
    inputs = [checkpoints.resolve(run, checkpoint_name), *([run.shortlist] if decode.shortlist else [])]
    if not _newer_than(hyp, inputs):
        translator = Translator.load(run.root, checkpoint_name, device, decode=decode, warn=warn)
        stderr.print(Text(f"Translating the {split} split into {hyp} on {translator.device} in {translator.precision}"),
                     soft_wrap=True)
        translate_file(translator, str(source), str(hyp))
    return _write_score(run.split_score(hyp), hyp, reference) | {"checkpoint": checkpoint_name}


def _newer_than(path: Path, inputs: list[Path]) -> bool:
    """Whether `path` exists and was written after every existing input, as make decides: a
    retrained checkpoint or a rewritten shortlist makes an old translation stale."""
    return path.exists() and all(not p.exists() or p.stat().st_mtime_ns <= path.stat().st_mtime_ns for p in inputs)


def split_hypothesis(run: RunDir, split: str, checkpoint_name: str, decode: DecodeConfig, run_beam_size: int) -> Path:
    """Where the translation of a split with these options lives: RUN/translations/SPLIT.hyp
    for the best checkpoint with the run's beam over the full vocabulary in full precision
    (what the toy recipe's translate step writes there), else
    SPLIT.CHECKPOINT.beamK[.sampleK.tempT.seedS][.shortlist][.int8].hyp, so a translation made
    with other options is never scored in place of the one asked for."""
    sampled = f"sample{decode.sample_topk}.temp{decode.temperature:g}.seed{decode.seed}"
    tags = ((sampled, decode.sample_topk is not None), ("shortlist", decode.shortlist),
            ("int8", decode.quantize == "int8"))
    variant = "".join(f".{tag}" for tag, used in tags if used)
    if checkpoint_name == "best" and decode.beam_size == run_beam_size and not variant:
        return run.translations / f"{split}.hyp"
    return run.translations / f"{split}.{Path(checkpoint_name).stem}.beam{decode.beam_size}{variant}.hyp"
