"""The preprocess step: read, clean, train the tokenizer, encode, filter and write a run's data.

The order matters. Text cleaning (empty sides, text broken by invalid UTF-8) comes before
tokenizer training, so garbage does not shape the vocabulary; the length filters come after
encoding, because they count subword tokens. Only training pairs are filtered by length or
encoding damage: valid and test are references and keep every pair with two non-empty sides
of at most decode.line_bytes (16,000) characters each.
Everything is built in RUN/.preprocess/ and replaces the run's files only once complete, so a
failed or interrupted redo (--force) leaves the run as it was; data/meta.json comes last and
marks the step complete.

The training split streams, so a corpus larger than memory works: pairs are read one at a
time and the clean ones written to temporary files in the data folder; SentencePiece samples
tokenizer.input_sentence_size sentences from them; they are encoded ENCODE_CHUNK pairs at a
time (SentencePiece spreads each chunk over all cores) and appended to the .npy arrays
(encoded.SideWriter). Valid and test are small and held in memory.

meta.json holds: src_lang, tgt_lang; splits.SPLIT.{read, invalid_utf8, dropped.REASON, kept};
filters; sources.SPLIT.{kind, path, [dataset_config, split, streaming,] files[{path, sha256}]};
tokenizer.{joint, model_type, src_vocab_size, tgt_vocab_size, sampled_variants, [from.{path, sha256}]};
created; lstmmt_version.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from lstmmt import __version__
from lstmmt.config import Config, DataConfig, TokenizerConfig
from lstmmt.console import stderr
from lstmmt.corpus import MissingSplit, Pair, Source, iter_pairs, local_files
from lstmmt.encoded import SideWriter, write_side
from lstmmt.errors import UserError
from lstmmt.rundir import SIDES, RunDir, atomic_write_text, sampled_split, sha256_file
from lstmmt.tokenizer import Sampling, Tokenizer, copy_tokenizer, model_files, train_tokenizer

SPLITS = ("train", "valid", "test")
REFERENCE_SPLITS = ("valid", "test")
DROP_REASONS = {"train": ("empty", "invalid_utf8", "too_long", "bad_ratio"), "valid": ("empty", "too_long"),
                "test": ("empty", "too_long")}
ENCODE_CHUNK = 50_000
"""Training pairs encoded at a time: bounds the memory of Python id lists on large corpora."""

T = TypeVar("T")
Problem = Callable[[Any, Any], str | None]
"""Names why a pair (of texts or of id lists) must go, or returns None to keep it."""


def preprocess(run: RunDir, config: Config, sources: dict[str, Source], force: bool = False,
               parent: RunDir | None = None) -> dict:
    """Build RUN/config.yaml, RUN/tokenizer/ and RUN/data/ from the given splits; return the meta dict.
    With `parent` (the files of a run or a release), its SentencePiece
    model(s) are copied, byte for byte, instead of training new ones, so a model of the parent
    can go on training on this corpus.

    Holds the run's lock throughout."""
    _check_split_names(sources)
    if parent is not None:
        _check_parent(config, parent)
    with run.lock("preprocess"):
        return _preprocess_locked(run, config, sources, force, parent)


def kept_settings(run: RunDir, force: bool) -> Config:
    """The base config of a preprocess: the defaults, or when --force redoes a run, the defaults
    with the run's model, train and decode sections kept (said on stderr), so redoing the data
    never silently resets how the run trains and translates."""
    if not (force and run.config.exists()):
        return Config()
    try:
        old = Config.load(run.config)
    except UserError as exc:
        stderr.print(f"[yellow]warning:[/] not keeping the settings of {escape(str(run.config))} ({escape(str(exc))}); "
                      "model, train and decode settings start from the defaults")
        return Config()
    stderr.print(f"keeping the model, train and decode settings of {escape(str(run.config))} "
                  "(change them with --set or --config)")
    return replace(Config(), model=old.model, train=old.train, decode=old.decode)


def with_parent_tokenizer(base: Config, parent: RunDir) -> Config:
    """The base config of `preprocess --tokenizer-from PARENT`: `base` with the parent's tokenizer
    section, which the user's settings may then not change (checked by preprocess), except how
    training text is sampled."""
    sampling = {key: getattr(base.tokenizer, key) for key in TokenizerConfig.SAMPLING}
    return replace(base, tokenizer=replace(Config.load(parent.config).tokenizer, **sampling))


def _check_parent(config: Config, parent: RunDir) -> None:
    """The parent's languages and tokenizer settings, or one line saying which differ."""
    theirs = Config.load(parent.config)
    if (config.data.src_lang, config.data.tgt_lang) != (theirs.data.src_lang, theirs.data.tgt_lang):
        raise UserError(f"--tokenizer-from {parent.root} is {theirs.data.src_lang}->{theirs.data.tgt_lang}, "
                        f"this corpus {config.data.src_lang}->{config.data.tgt_lang}: use the parent's languages")
    changed = [f"tokenizer.{k}" for k, v in asdict(theirs.tokenizer).items()
               if getattr(config.tokenizer, k) != v and k not in TokenizerConfig.SAMPLING]
    if changed:
        raise UserError(f"--tokenizer-from {parent.root} takes its tokenizer as it is, but {', '.join(changed)} "
                        "differs from the parent's: drop those settings")


def _preprocess_locked(run: RunDir, config: Config, sources: dict[str, Source], force: bool,
                       parent: RunDir | None) -> dict:
    """Check that the run may be (re)done, build everything in its staging folder, then let it
    replace the run's files: a mistake found on the way, Ctrl-C or a kill leaves the run as it was."""
    _check_previous(run, force)
    run.remove_stale_temporaries()  # of a killed preprocess: no other one runs, we hold the lock
    stats: dict[str, dict] = {}
    meta = _build(run.staging, config, sources, parent, stats)
    _replace_outputs(run, run.staging)
    _show_summary(run, stats)
    return meta


def _build(run: RunDir, config: Config, sources: dict[str, Source], parent: RunDir | None,
           stats: dict[str, dict]) -> dict:
    """Write config.yaml, tokenizer/ and data/ (meta.json last) into `run` (the staging folder),
    filling `stats` with what each split kept and dropped; return the meta dict."""
    run.data_dir.mkdir(parents=True, exist_ok=True)
    # The references first: they are small, so a mistake in them shows before the long train pass.
    references = {split: pairs for split in REFERENCE_SPLITS if split in sources
                  and (pairs := _read_reference(split, sources[split], config, stats)) is not None}
    with tempfile.TemporaryDirectory(dir=run.data_dir, prefix=".train-text.") as tmp:
        text_files = {side: Path(tmp) / f"train.{side}.txt" for side in SIDES}
        clean_pairs = _clean_train(sources["train"], config.data, text_files, stats)
        if parent is None:
            stderr.print(f"training the tokenizer on {clean_pairs:,} pairs")
            train_tokenizer(_text_lines(text_files["src"]), _text_lines(text_files["tgt"]), config.tokenizer,
                            run.tokenizer_dir)
        else:
            stderr.print(f"using the tokenizer of {escape(str(parent.root))}")
            copy_tokenizer(parent.tokenizer_dir, run.tokenizer_dir)
        tokenizer = Tokenizer.load(run.tokenizer_dir)
        stats["train"]["kept"] = _encode_train(run, tokenizer, text_files, config, stats["train"]["dropped"])
    if stats["train"]["kept"] == 0:
        raise UserError(
            f"the length filters dropped every training pair (data.max_tokens={config.data.max_tokens}, "
            f"data.max_ratio={config.data.max_ratio}): raise them, e.g. --set data.max_tokens=N"
        )
    for split, (src, tgt) in references.items():
        write_side(run, split, "src", tokenizer.encode_src(src))
        write_side(run, split, "tgt", tokenizer.encode_tgt(tgt))
        stats[split]["kept"] = len(src)
        _write_text(run, split, src, tgt)
    config.save(run.config)
    stats = {split: stats[split] for split in SPLITS if split in stats}
    meta = _meta(config, sources, stats, tokenizer)
    if parent is not None:
        meta["tokenizer"]["from"] = {"path": str(parent.root.resolve()), "sha256": parent.tokenizer_digest()}
    atomic_write_text(run.meta, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def _check_split_names(sources: dict[str, Source]) -> None:
    unknown = sorted(set(sources) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown split name(s) {', '.join(unknown)}: use train, valid and test")
    if "train" not in sources:
        raise UserError("preprocess needs a train source: the tokenizer and the model learn from it")


def _check_previous(run: RunDir, force: bool) -> None:
    """Refuse to redo a finished step, or to write into a folder that holds other files, without
    --force; warn when checkpoints trained on the old data stay beside the new."""
    if run.config.exists() and run.meta.exists() and not force:
        raise UserError(
            f"{run.root} is already preprocessed (see {run.meta}): pass --force to redo it, "
            "which replaces its tokenizer and encoded data"
        )
    if not force and (found := _foreign_file(run)) is not None:
        raise UserError(
            f"{run.root} holds files but no finished lstmmt run ({found}): choose a new or empty folder, or pass "
            "--force to preprocess into it anyway (it replaces config.yaml and the tokenizer/ and data/ files)"
        )
    if any(run.checkpoints.glob("*.pt")):
        old_models = escape(str(run.checkpoints))
        stderr.print(f"[yellow]warning:[/] {old_models} holds models trained on the old data and tokenizer")


def _replace_outputs(run: RunDir, stage: RunDir) -> None:
    """Move the staged files into the run in place of its own: meta.json goes first (a crash from
    here on leaves the run visibly unfinished) and comes back last. Only this step's own files are
    replaced, never whole folders: a run directory may sit beside the user's files."""
    run.meta.unlink(missing_ok=True)
    outputs = [path(split, side) for path in (run.ids, run.offsets, run.text) for split in SPLITS for side in SIDES]
    for path in outputs + run.sampled_data() + model_files(run.tokenizer_dir):
        path.unlink(missing_ok=True)
    for staged, folder in ((stage.tokenizer_dir, run.tokenizer_dir), (stage.data_dir, run.data_dir)):
        folder.mkdir(parents=True, exist_ok=True)
        for file in staged.iterdir():
            if file != stage.meta:
                os.replace(file, folder / file.name)
    os.replace(stage.config, run.config)
    os.replace(stage.meta, run.meta)
    shutil.rmtree(stage.root)


def _foreign_file(run: RunDir) -> Path | None:
    """A file in a folder that is no finished run, other than the lock and the temporaries of an
    interrupted preprocess (which may be redone as it was started): a user's config.yaml or
    tokenizer/spm.model would be replaced without a word."""
    skipped = {run.lock_file, *run.stale_temporaries()}
    for folder, subfolders, files in os.walk(run.root):
        subfolders[:] = sorted(name for name in subfolders if Path(folder, name) not in skipped)
        for name in sorted(files):
            if Path(folder, name) not in skipped:
                return Path(folder, name)
    return None


def _read_reference(
    split: str, source: Source, config: Config, stats: dict[str, dict],
) -> tuple[list[str], list[str]] | None:
    """A valid/test split's pairs with two non-empty sides of at most decode.line_bytes characters
    (what translate reads of a line: a longer one is no sentence, and validating on it would take
    hours), or None (with a warning) when an optional dataset split does not exist."""
    stderr.print(f"reading {split} from {escape(source.path)}")
    counts, dropped = {"read": 0, "invalid_utf8": 0}, dict.fromkeys(DROP_REASONS[split], 0)
    data, most = config.data, config.decode.line_bytes

    def problem(src: str, tgt: str) -> str | None:
        return _empty_side(src, tgt) or ("too_long" if max(len(src), len(tgt)) > most else None)

    try:
        pairs = list(_clean(iter_pairs(source, data.src_lang, data.tgt_lang), problem, counts, dropped))
    except MissingSplit as missing:
        if source.required:
            raise
        stderr.print(f"[yellow]warning:[/] {escape(str(missing))}; continuing without a {split} split")
        return None
    stats[split] = {**counts, "dropped": dropped}
    _require_pairs(split, source, bool(pairs), stats[split])
    return [src for src, _ in pairs], [tgt for _, tgt in pairs]


def _clean_train(source: Source, data: DataConfig, text_files: dict[str, Path], stats: dict[str, dict]) -> int:
    """Stream the training pairs through the text filters into one plain text file per side;
    returns the number of pairs written."""
    stderr.print(f"reading train from {escape(source.path)}")
    counts, dropped = {"read": 0, "invalid_utf8": 0}, dict.fromkeys(DROP_REASONS["train"], 0)
    kept = 0
    with open(text_files["src"], "w", encoding="utf-8", newline="\n") as src_out, \
            open(text_files["tgt"], "w", encoding="utf-8", newline="\n") as tgt_out, \
            _progress() as progress:
        task = progress.add_task("reading train", total=None)
        for src, tgt in _clean(iter_pairs(source, data.src_lang, data.tgt_lang), _train_text_problem, counts, dropped):
            src_out.write(src + "\n")
            tgt_out.write(tgt + "\n")
            kept += 1
            if kept % 10_000 == 0:
                progress.update(task, completed=kept)
    stats["train"] = {**counts, "dropped": dropped}
    _require_pairs("train", source, kept > 0, stats["train"])
    return kept


def _clean(
    pairs: Iterable[Pair], problem: Problem, counts: dict[str, int], dropped: dict[str, int],
) -> Iterator[tuple[str, str]]:
    """The (source, target) texts in which `problem` finds nothing, counting what was read and dropped."""
    for src, tgt, bad_bytes in pairs:
        counts["read"] += 1
        counts["invalid_utf8"] += bad_bytes
        reason = problem(src, tgt)
        if reason:
            dropped[reason] += 1
        else:
            yield src, tgt


def _require_pairs(split: str, source: Source, any_kept: bool, stats: dict) -> None:
    if not any_kept:
        raise UserError(
            f"{source.path} has no usable {split} pairs ({stats['read']} read, "
            f"dropped {_listed(stats['dropped'])}): check the format and data.src_lang/data.tgt_lang"
        )


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in counts.items())


def _text_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="\n") as handle:
        for line in handle:
            yield line[:-1]


def _encode_train(
    run: RunDir, tokenizer: Tokenizer, text_files: dict[str, Path], config: Config, dropped: dict[str, int],
) -> int:
    """Encode the cleaned training text chunk by chunk into RUN/data, without the pairs the length
    filters drop, and keep the text of the pairs kept (RUN/data/train.SIDE.txt); with
    tokenizer.sample_alpha, also `sample_variants` sampled segmentations of them. Returns the
    number of pairs kept."""
    alpha, variants = config.tokenizer.sample_alpha, config.tokenizer.sample_variants
    splits = ["train", *(sampled_split(k) for k in range(1, variants + 1) if alpha > 0)]
    writers = {(split, side): SideWriter(run, split, side) for split in splits for side in SIDES}
    kept_text = {side: text_files[side].with_suffix(".kept") for side in SIDES}
    lines = zip(_text_lines(text_files["src"]), _text_lines(text_files["tgt"]))
    chunks = iter(lambda: list(itertools.islice(lines, ENCODE_CHUNK)), [])
    length_problem = partial(_length_problem, data=config.data)
    with open(kept_text["src"], "w", encoding="utf-8", newline="\n") as src_out, \
            open(kept_text["tgt"], "w", encoding="utf-8", newline="\n") as tgt_out, _progress() as progress:
        task = progress.add_task("encoding train", total=None)
        for number, chunk in enumerate(chunks):
            src_ids, tgt_ids = tokenizer.encode_src([s for s, _ in chunk]), tokenizer.encode_tgt([t for _, t in chunk])
            kept = _kept(src_ids, tgt_ids, length_problem, dropped)
            src_text, tgt_text = [chunk[i][0] for i in kept], [chunk[i][1] for i in kept]
            src_out.writelines(line + "\n" for line in src_text)
            tgt_out.writelines(line + "\n" for line in tgt_text)
            writers["train", "src"].add([src_ids[i] for i in kept])
            writers["train", "tgt"].add([tgt_ids[i] for i in kept])
            for k, split in enumerate(splits[1:], start=1):
                seeds = np.random.SeedSequence([config.train.seed, k, number]).generate_state(2)
                writers[split, "src"].add(tokenizer.encode_src(src_text, Sampling(alpha, int(seeds[0]))))
                writers[split, "tgt"].add(tokenizer.encode_tgt(tgt_text, Sampling(alpha, int(seeds[1]))))
            progress.advance(task, len(chunk))
    for side in SIDES:
        os.replace(kept_text[side], run.text("train", side))
    return [writer.close() for writer in writers.values()][0]


def _progress() -> Progress:
    """A counter for long passes over the training data; it disappears when done."""
    return Progress(*Progress.get_default_columns()[:1], "{task.completed:,} pairs", console=stderr, transient=True)


def _kept(src: list[T], tgt: list[T], problem: Problem, dropped: dict[str, int]) -> list[int]:
    """The positions of the pairs in which `problem` finds nothing; each other pair is counted
    under the problem it has."""
    kept = []
    for i, pair in enumerate(zip(src, tgt)):
        reason = problem(*pair)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(i)
    return kept


def _empty_side(src: str, tgt: str) -> str | None:
    return "empty" if not src or not tgt else None


def _train_text_problem(src: str, tgt: str) -> str | None:
    """Empty sides, and U+FFFD: the mark of text damaged by invalid UTF-8 (here or upstream)."""
    return _empty_side(src, tgt) or ("invalid_utf8" if "\ufffd" in src or "\ufffd" in tgt else None)


def _length_problem(src: Sequence[int], tgt: Sequence[int], data: DataConfig) -> str | None:
    """Very long pairs cost memory and rarely help; very uneven ones are usually misaligned."""
    longer, shorter = max(len(src), len(tgt)), min(len(src), len(tgt))
    if longer > data.max_tokens:
        return "too_long"
    if longer / max(1, shorter) > data.max_ratio:
        return "bad_ratio"
    return None


def _write_text(run: RunDir, split: str, src: list[str], tgt: list[str]) -> None:
    """The cleaned text of a reference split: BLEU references and the input of `evaluate --split`."""
    for side, lines in zip(SIDES, (src, tgt)):
        atomic_write_text(run.text(split, side), "".join(line + "\n" for line in lines))


def _meta(config: Config, sources: dict[str, Source], stats: dict[str, dict], tokenizer: Tokenizer) -> dict:
    data = config.data
    return {
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "splits": stats,
        "filters": {"max_tokens": data.max_tokens, "max_ratio": data.max_ratio, "applied_to": ["train"]},
        "sources": {split: _describe(sources[split], data) for split in stats},
        "tokenizer": {
            "joint": tokenizer.joint,
            "model_type": config.tokenizer.model_type,
            "src_vocab_size": tokenizer.src_vocab_size,
            "tgt_vocab_size": tokenizer.tgt_vocab_size,
            "sampled_variants": config.tokenizer.sample_variants if config.tokenizer.sample_alpha > 0 else 0,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lstmmt_version": __version__,
    }


def _describe(source: Source, data: DataConfig) -> dict:
    """Where a split came from, with a hash of each local file so a changed input is noticed."""
    entry: dict = {"kind": source.kind, "path": source.path}
    if source.kind == "dataset":
        entry.update(dataset_config=source.dataset_config, split=source.split, streaming=source.streaming)
    files = local_files(source, data.src_lang, data.tgt_lang)
    entry["files"] = [{"path": str(path), "sha256": sha256_file(path)} for path in files]
    return entry




def _show_summary(run: RunDir, stats: dict[str, dict]) -> None:
    reasons = DROP_REASONS["train"]
    table = Table(
        title=f"preprocessed {escape(str(run.root))}",
        caption="pairs dropped, by reason; valid and test lose only empty sides and over-long lines",
    )
    for column in ("split", "read", *(reason.replace("_", " ") for reason in reasons), "kept"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in stats.items():
        dropped = [str(counts["dropped"].get(reason, "-")) for reason in reasons]
        table.add_row(split, str(counts["read"]), *dropped, str(counts["kept"]))
    stderr.print(table)
