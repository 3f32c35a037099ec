"""The evaluate step: BLEU, chrF and TER of a hypothesis file against references, saved under scores/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from lstmmt.errors import UserError
from lstmmt.rundir import RunDir, atomic_write_text
from lstmmt.scoring import score
from lstmmt.translate import translate_file

stderr = Console(stderr=True)


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


def evaluate_files(run: RunDir, hyp: Path, ref: Path, name: Optional[str] = None) -> dict[str, Any]:
    """Score hyp against ref and save the result as RUN/scores/NAME.json (NAME defaults to hyp's stem)."""
    result = score(read_lines(hyp), read_lines(ref)) | {"hypothesis": str(hyp), "reference": str(ref)}
    atomic_write_text(run.scores / f"{name or Path(hyp).stem}.json", json.dumps(result, indent=2) + "\n")
    return result


def evaluate_split(run: RunDir, split: str, checkpoint_name: str, beam_size: Optional[int], device: str) -> dict[str, Any]:
    """Score a stored split, translating its source into RUN/translations/SPLIT.hyp first if needed."""
    run.require_preprocessed()
    source, reference = run.text(split, "src"), run.text(split, "tgt")
    if not source.exists():
        raise UserError(f"{run.root} has no stored {split} split: pass --{split} to `lstmmt preprocess`, or use --hyp/--ref")
    hyp = run.translations / f"{split}.hyp"
    if not hyp.exists():
        stderr.print(f"Translating the {split} split into {hyp}")
        translate_file(run, str(source), str(hyp), checkpoint_name, beam_size, device_name=device)
    return evaluate_files(run, hyp, reference, split) | {"checkpoint": checkpoint_name}
