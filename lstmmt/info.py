"""`lstmmt info`: a readable summary of a run directory or a release, built only from its files."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lstmmt.config import Config
from lstmmt.metrics_log import read_metrics
from lstmmt.release import Release, decoding, is_release, open_release
from lstmmt.rundir import RunDir


def describe(path: Path) -> RenderableType:
    """The summary of a run directory, or of a release (checked against its manifest first)."""
    return describe_release(open_release(path), path) if is_release(path) else describe_run(RunDir(path))


def describe_release(release: Release, path: Path) -> RenderableType:
    """The release unpacked from `path` (a folder or a .tar.gz): its manifest, model and decode settings."""
    facts = release.manifest
    config = Config.load(release.layout.config)
    title = Text.assemble((str(path), "bold"), f": release, {facts.get('source_lang')} -> "
                          f"{facts.get('target_lang')}")
    table = Table(title="manifest.json", show_header=False)
    source = facts.get("checkpoint") or {}
    for name, value in (("format", f"{facts.get('format_version')} (lstmmt {facts.get('lstmmt_version')})"),
                        ("created", facts.get("created")), ("license", facts.get("license") or "not stated"),
                        ("parameters", f"{facts.get('parameters', 0):,} ({facts.get('dtype')})"),
                        ("from", f"{source.get('name')} at step {source.get('step')}"),
                        ("files", ", ".join(sorted(facts.get("files", {}))))):
        table.add_row(name, str(value))
    return Group(title, _settings(config), table, Text("decode: " + decoding(config.decode)))


def describe_run(run: RunDir) -> RenderableType:
    run.require_preprocessed()
    config = Config.load(run.config)
    meta = run.read_meta()
    title = Text.assemble((str(run.root), "bold"), f": {config.data.src_lang} -> {config.data.tgt_lang}")
    parts: list[RenderableType] = [title]
    parts.append(_settings(config))
    parts.append(_parent(run, config))
    parts.append(_splits(meta))
    parts.append(_checkpoints(run))
    parts.append(_validation(run))
    parts.append(_scores(run))
    return Group(*[p for p in parts if p is not None])


def _settings(config: Config) -> Table:
    table = Table(title="config (config.yaml)", show_header=False)
    m, t, tok = config.model, config.train, config.tokenizer
    sampling = f", {tok.sample_variants} sampled segmentations (alpha {tok.sample_alpha})" if tok.sample_alpha else ""
    table.add_row("tokenizer", f"SentencePiece {tok.model_type}, vocab {tok.vocab_size}, "
                               f"{'joint' if tok.joint else 'separate'}{sampling}")
    table.add_row("model", f"embed {m.embed_size}, hidden {m.hidden_size}, encoder {m.encoder_layers}x BiLSTM, "
                           f"decoder {m.decoder_layers}x LSTM, {m.attention} attention, "
                           f"input feeding {m.input_feeding}")
    accumulated = f" x {t.accumulate} per step" if t.accumulate > 1 else ""
    table.add_row("train", f"batch {t.batch_tokens} tokens{accumulated}, lr {t.lr} ({t.schedule}), "
                           f"max steps {t.max_steps}, max time {t.max_time}")
    return table


def _parent(run: RunDir, config: Config) -> Text | None:
    """The parent the run started from (train.init_from), with the sha256 of the weights it
    loaded once finished training has recorded it in train.json."""
    if config.train.init_from is None:
        return None
    try:
        recorded = json.loads(run.train_summary.read_text(encoding="utf-8"))["init_from"]["sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        recorded = None
    digest = f" (weights sha256 {recorded[:16]}...)" if isinstance(recorded, str) else ""
    return Text(f"started from {config.train.init_from}{digest}")


def _splits(meta: dict) -> Table:
    table = Table(title="data (data/meta.json)")
    table.add_column("split")
    table.add_column("pairs kept", justify="right")
    table.add_column("details")
    for name, stats in meta.get("splits", {}).items():
        kept = stats.get("kept", "?")
        details = ", ".join(f"{k} {v}" for k, v in stats.items() if k != "kept" and isinstance(v, (int, float)))
        table.add_row(name, f"{kept:,}" if isinstance(kept, int) else str(kept), details)
    return table


def _checkpoints(run: RunDir) -> Table | None:
    files = sorted(run.checkpoints.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    table = Table(title="checkpoints/")
    table.add_column("file")
    table.add_column("size", justify="right")
    for path in files:
        table.add_row(path.name, f"{path.stat().st_size / 2**20:.1f} MiB")
    return table


def _validation(run: RunDir) -> str | None:
    valid = [r for r in read_metrics(run.metrics, "valid") if isinstance(r.get("bleu"), (int, float))]
    if not valid:
        return None
    best = max(valid, key=lambda r: r["bleu"])
    last = valid[-1]
    return (f"validation: {len(valid)} runs, best BLEU {best['bleu']:.2f} at step {best['step']}, "
            f"last at step {last['step']} (BLEU {last['bleu']:.2f}, {last.get('elapsed', 0):.0f}s of training)")


def _scores(run: RunDir) -> Table | None:
    files = sorted(Path(run.scores).glob("*.json"))
    if not files:
        return None
    table = Table(title="scores/")
    for column in ("name", "BLEU", "chrF", "TER", "lines"):
        table.add_column(column)
    for path in files:
        try:
            score = json.loads(path.read_text(encoding="utf-8"))
            row = [f"{score['bleu']:.2f}", f"{score['chrf']:.2f}", f"{score['ter']:.2f}", str(score["lines"])]
        except (OSError, ValueError, TypeError, KeyError):
            row = ["damaged", "", "", ""]
        table.add_row(path.stem, *row)
    return table
