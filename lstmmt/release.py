"""Releases: a trained model that leaves its run directory.

A release is a folder (or a .tar.gz of one) holding only what translation needs:

    manifest.json        format version, lstmmt version, languages, parameter count, and the
                         sha256 and size of every other file
    README.md            the model card, written from what the run recorded
    config.yaml          the run's settings (the model and decode sections are the ones used)
    model.safetensors    the weights (fp32 or bf16; no optimizer state, no pickle)
    tokenizer/           the SentencePiece model(s), byte-identical to the run's
    shortlist.npz        the vocabulary shortlist, when the run has one

Every file is checked against the manifest before anything is loaded, so a damaged,
truncated or altered release is one UserError naming the file. Weights are read with
safetensors, which holds tensors and never executes code.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lstmmt.errors import UserError, first_line
from lstmmt.rundir import RunDir, atomic_write, atomic_write_text, check_output, sha256_file, write_output

if TYPE_CHECKING:

    from lstmmt.config import Config, DecodeConfig
    from lstmmt.model import Seq2Seq
    from lstmmt.tokenizer import Tokenizer

FORMAT_VERSION = 1
"""Raised when the layout changes; a release of a newer format is refused with one line."""
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
Dtype = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Release:
    """An unpacked release folder whose files were checked against its manifest.

    config.yaml, tokenizer/ and shortlist.npz sit where a run directory keeps them, so
    `layout` (a RunDir of the folder) names them, and code that reads them from a run reads
    them from a release alike."""

    root: Path
    manifest: dict[str, Any]

    @property
    def layout(self) -> RunDir:
        return RunDir(self.root)

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS

    @property
    def card(self) -> Path:
        return self.root / CARD

    def model(self, tokenizer: Tokenizer) -> Seq2Seq:
        """The model, in fp32, with the release's weights (bf16 weights are widened)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from lstmmt.checkpoint import build_model
        from lstmmt.config import Config

        model = build_model(Config.load(self.layout.config), tokenizer)
        try:
            load_model(model, self.weights)
        except (SafetensorError, RuntimeError, OSError) as exc:
            problem = first_line(exc, 200)
            raise UserError(f"{self.weights} does not match this release's config.yaml: {problem}") from None
        return model.float()


def is_release(path: Path | str) -> bool:
    """Whether `path` is a release (a folder with manifest.json, or a .tar.gz file) rather than a run.
    A folder with a release's weights but no manifest counts too, so opening it says what is missing."""
    path = Path(path)
    return ((path / MANIFEST).is_file() or (path / WEIGHTS).is_file()
            or (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))))


def open_source(path: Path | str) -> RunDir | Release:
    """What translates: a run directory with a trained model, or a verified release."""
    if is_release(path):
        return open_release(path)
    run = RunDir(Path(path))
    run.require_checkpoint()
    return run


def open_parent(path: Path | str) -> RunDir | Release:
    """The parent of a child run (`preprocess --tokenizer-from`): a verified release, or a
    preprocessed run directory (it has a tokenizer; it needs no model yet)."""
    if is_release(path):
        return open_release(path)
    run = RunDir(Path(path))
    run.require_preprocessed()
    return run


def layout(source: RunDir | Release) -> RunDir:
    """Where a run or a release keeps config.yaml, tokenizer/ and shortlist.npz."""
    return source.layout if isinstance(source, Release) else source


def open_release(path: Path | str) -> Release:
    """The release at `path` (a folder, or a .tar.gz unpacked into a temporary folder that lives
    as long as the process), every file checked against the manifest."""
    path = Path(path)
    if path.is_file():
        path = _unpack(path)
    manifest = _read_manifest(path)
    for name, entry in manifest["files"].items():
        _check_file(path, name, entry)
    listed = {(path / name).resolve() for name in [MANIFEST, *manifest["files"]]}
    unlisted = sorted(file for file in path.rglob("*") if file.is_file() and file.resolve() not in listed)
    if unlisted:  # an entry taken out of the manifest would otherwise leave its file unchecked
        raise UserError(f"{unlisted[0]} is not listed in {path / MANIFEST}: the release was altered; export it again")
    return Release(path, manifest)


def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root} is not a whole release: it has no {MANIFEST} (export it again)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is damaged: {first_line(exc, 200)}") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int)
            and isinstance(manifest.get("files"), dict)):
        raise UserError(f"{file} is not an lstmmt release manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise UserError(f"{file}: release format {manifest['format_version']} was written by a newer lstmmt "
                        f"({manifest.get('lstmmt_version', '?')}); this one reads format {FORMAT_VERSION}: "
                        "upgrade lstmmt")
    return manifest


def _check_file(root: Path, name: str, entry: Any) -> None:
    """A manifest entry's file: inside the release, present, of its size and sha256."""
    file = (root / name).resolve()
    if not (isinstance(entry, dict) and file.is_relative_to(root.resolve()) and ".." not in Path(name).parts):
        raise UserError(f"{root / MANIFEST} is damaged: bad entry {name[:80]!r}")
    if not file.is_file():
        raise UserError(f"{root / name} is missing from the release")
    if file.stat().st_size != entry.get("bytes") or sha256_file(file) != entry.get("sha256"):
        raise UserError(f"{root / name} is damaged or was altered (its sha256 differs from {MANIFEST}'s)")


def _unpack(archive: Path) -> Path:
    """Extract a .tar.gz release into a temporary folder (removed at exit); the release folder in it."""
    target = Path(tempfile.mkdtemp(prefix="lstmmt-release."))
    import atexit

    atexit.register(shutil.rmtree, target, True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")  # no absolute paths, no links out, no devices
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"cannot unpack {archive} (damaged or not a release archive): {first_line(exc, 200)}") from None
    inner = list(target.iterdir())
    if len(inner) == 1 and inner[0].is_dir():
        return inner[0]
    return target


# -- export ---------------------------------------------------------------------------------


def export(run: RunDir, output: Path, checkpoint_name: str = "best", dtype: Dtype = "fp32",
           decode: DecodeConfig | None = None, license: str | None = None,
           description: str | None = None) -> Path:
    """Write a release of `checkpoint_name` of `run` to `output` (a folder, or a .tar.gz file);
    the folder or file appears only once complete. `decode`: the release's decode settings
    (default: the run's). Returns `output`."""
    from lstmmt import checkpoint as checkpoints

    run.require_checkpoint()
    output = Path(output)
    archive = output.name.endswith((".tar.gz", ".tgz"))
    if archive:
        check_output(output, run=run)
    elif run.owns(output):
        raise UserError(f"{output} lies in what the run {run.root} keeps: write the release elsewhere")
    elif output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output} already exists: choose a new folder, or a .tar.gz file name")
    source = checkpoints.resolve(run, checkpoint_name)
    payload = checkpoints.load(source)
    parent = output.parent if output.parent != Path("") else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{output.name}.") as tmp:
        folder = Path(tmp) / output.name.removesuffix(".tar.gz").removesuffix(".tgz")
        _write_release(run, folder, source, payload, dtype, decode, license, description)
        open_release(folder)  # what a user will load: check it reads back before it appears
        if archive:
            write_output(output, lambda file: _tar(folder, file))
        else:
            os.replace(folder, output) if not output.exists() else _replace_empty_dir(folder, output)
    return output


def _replace_empty_dir(folder: Path, output: Path) -> None:
    output.rmdir()
    os.replace(folder, output)


def _tar(folder: Path, file: Path) -> None:
    with tarfile.open(file, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def _write_release(run: RunDir, folder: Path, source: Path, payload: dict[str, Any], dtype: Dtype,
                   decode: DecodeConfig | None, license: str | None, description: str | None) -> None:
    """Every file of the release in `folder`, the manifest last."""
    from dataclasses import replace

    from lstmmt.config import Config
    from lstmmt.tokenizer import copy_tokenizer

    config = Config.from_dict(payload["config"])
    config = replace(config, decode=decode or Config.load(run.config).decode)
    layout = RunDir(folder)
    copy_tokenizer(run.tokenizer_dir, layout.tokenizer_dir)
    if run.shortlist.exists():
        shutil.copyfile(run.shortlist, layout.shortlist)
    config.save(layout.config)
    parameters = _save_weights(config, payload, folder / WEIGHTS, dtype, run)
    facts = {
        "format": "lstmmt-release", "format_version": FORMAT_VERSION, "lstmmt_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_lang": config.data.src_lang, "target_lang": config.data.tgt_lang,
        "parameters": parameters, "dtype": dtype,
        "checkpoint": {"name": source.name, "step": payload.get("step"), "sha256": sha256_file(source)},
        "license": license,
    }
    atomic_write_text(folder / CARD, model_card(run, config, facts, description))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    facts["files"] = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in files}
    atomic_write_text(folder / MANIFEST, json.dumps(facts, indent=2) + "\n")


def _save_weights(config: Config, payload: dict[str, Any], path: Path, dtype: Dtype, run: RunDir) -> int:
    """Write the checkpoint's weights with safetensors (a tied tensor once); the parameter count."""
    import torch
    from safetensors.torch import save_model

    from lstmmt.checkpoint import build_model
    from lstmmt.model import count_parameters
    from lstmmt.tokenizer import Tokenizer

    model = build_model(config, Tokenizer.load(run.tokenizer_dir))
    model.load_state_dict(payload["model"])
    if dtype == "bf16":
        model.to(torch.bfloat16)
    # Through atomic_write for the file mode a user's umask gives (safetensors creates it 0600).
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata={"format": "lstmmt", "dtype": dtype}))
    return count_parameters(model)


def _version() -> str:
    from lstmmt import __version__

    return __version__


# -- the model card -------------------------------------------------------------------------


def model_card(run: RunDir, config: Config, facts: dict[str, Any], description: str | None) -> str:
    """README.md of a release: what the model is and what the run measured, from the run's files."""
    src, tgt = config.data.src_lang, config.data.tgt_lang
    lines = [f"# lstmmt {src}->{tgt} translation model", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [f"- Languages: {src} -> {tgt}",
              f"- Parameters: {facts['parameters']:,} ({facts['dtype']} weights in {WEIGHTS})",
              f"- From checkpoint {facts['checkpoint']['name']} at step {facts['checkpoint']['step']} "
              f"(sha256 {facts['checkpoint']['sha256'][:16]}...)",
              f"- Made with lstmmt {facts['lstmmt_version']} on {facts['created'][:10]}",
              f"- License: {facts['license'] or 'not stated'}", ""]
    lines += ["## Use", "", "```", f"lstmmt translate RELEASE -i input.{src} -o output.{tgt}",
              "lstmmt serve RELEASE", "```", "",
              "In Python: `Translator.load(\"RELEASE\")` (see lstmmt's docs/api.md).", ""]
    lines += _training_data(run) + _settings(config) + _training(run) + _scores(run)
    return "\n".join(lines).rstrip() + "\n"


def _training_data(run: RunDir) -> list[str]:
    meta = run.read_meta()
    lines = ["## Training data", "", "| split | pairs kept | pairs read | files (sha256) |", "|---|---:|---:|---|"]
    for split, stats in meta["splits"].items():
        source = meta.get("sources", {}).get(split, {})
        named = "<br>".join(f"`{Path(f['path']).name}` ({f.get('sha256', '?')[:16]}...)"
                            for f in source.get("files", []) if isinstance(f, dict) and "path" in f)
        named = named or source.get("path", "")
        lines.append(f"| {split} | {stats.get('kept', '?')} | {stats.get('read', '?')} | {named} |")
    filters = meta.get("filters", {})
    if filters:
        lines += ["", f"Filters on {', '.join(filters.get('applied_to', []))}: pairs with a side over "
                      f"{filters.get('max_tokens')} subword tokens or a length ratio over {filters.get('max_ratio')} "
                      "dropped."]
    return lines + [""]


def _settings(config: Config) -> list[str]:
    m, t, tok = config.model, config.train, config.tokenizer
    return ["## Model and training settings", "",
            f"- Tokenizer: SentencePiece {tok.model_type}, {tok.vocab_size:,} pieces, "
            f"{'joint' if tok.joint else 'separate'}",
            f"- Model: embeddings {m.embed_size}, {m.encoder_layers}-layer BiLSTM encoder, {m.decoder_layers}-layer "
            f"LSTM decoder of {m.hidden_size}, {m.attention} attention, input feeding {str(m.input_feeding).lower()}, "
            f"tied embeddings {str(m.tie_embeddings).lower()}",
            f"- Training: {t.batch_tokens}-token batches, lr {t.lr} ({t.schedule} schedule), label smoothing "
            f"{t.label_smoothing}, dropout {m.dropout}",
            f"- Decoding: {decoding(config.decode)}",
            ""]


def decoding(decode: DecodeConfig) -> str:
    """A release's decode settings in a few words, for its model card and `lstmmt info`."""
    options = [f"beam {decode.beam_size}", f"length penalty {decode.length_penalty}",
               *(["shortlist"] if decode.shortlist else []), *([decode.quantize] if decode.quantize != "none" else [])]
    return ", ".join(options)


def _training(run: RunDir) -> list[str]:
    try:
        summary = json.loads(run.train_summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["## Training", "", "Training has not finished (no train.json): the model is an intermediate one.", ""]
    hours = summary.get("training_seconds", 0) / 3600
    hardware = summary.get("hardware") or summary.get("device", "?")
    best = summary.get("best_valid_bleu")
    return ["## Training", "",
            f"- Stopped by {summary.get('stopped', '?')} at step {summary.get('step', '?')} "
            f"(epoch {summary.get('epoch', '?')}) after {hours:.2f} h of training",
            f"- Hardware: {hardware}, precision {summary.get('precision', '?')}",
            f"- Best validation BLEU (greedy search): {best:.2f}" if isinstance(best, (int, float)) else
            "- No validation split", ""]


def _scores(run: RunDir) -> list[str]:
    rows = []
    for path in sorted(run.scores.glob("*.json")):
        try:
            score = json.loads(path.read_text(encoding="utf-8"))
            rows.append(f"| {path.stem} | {score['bleu']:.2f} | {score['chrf']:.2f} | {score['ter']:.2f} | "
                        f"{score['lines']} | `{score['signatures']['bleu']}` |")
        except (OSError, ValueError, TypeError, KeyError):
            continue
    if not rows:
        return ["## Scores", "", "No stored scores (`lstmmt evaluate RUN --split test` stores one).", ""]
    return ["## Scores", "", "Stored by `lstmmt evaluate` in the run (sacreBLEU):", "",
            "| name | BLEU | chrF | TER | lines | BLEU signature |", "|---|---:|---:|---:|---:|---|", *rows, ""]
