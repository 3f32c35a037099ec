"""The `lstmmt` command: thin Typer commands that parse options and call the steps.

A UserError anywhere below becomes one red line on stderr and exit status 1, and so does an
OSError (disk full, read-only file system, no permission: the path and the cause). Any other
exception is a bug: it prints one short line naming it and exits 1, and with
LSTMMT_TRACEBACK=1 in the environment the full traceback instead.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.table import Table
from rich.text import Text

from lstmmt.config import Config, option_help, read_yaml
from lstmmt.console import stderr, stdout
from lstmmt.errors import UserError, first_line, io_error_message
from lstmmt.rundir import RunDir

if TYPE_CHECKING:
    from lstmmt.config import DecodeConfig
    from lstmmt.release import Release
    from lstmmt.translator import Translator

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    help="LSTM sequence-to-sequence machine translation. Steps: preprocess -> train -> translate -> evaluate, "
    "all reading and writing one run directory.",
)


def _print_version(value: bool) -> None:
    if value:
        from lstmmt import __version__

        print(f"lstmmt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print lstmmt's version and exit.")) -> None:
    """Options before the command."""

RunArg = typer.Argument(..., help="The run directory shared by all steps.", show_default=False)
ConfigOpt = typer.Option(None, "--config", help="YAML file with config sections (data, tokenizer, model, train, "
                         "decode) laid over the run's config.")
SetOpt = typer.Option(None, "--set", help="Override one config key, e.g. --set model.hidden_size=256 (repeatable).")


TRACEBACK_VARIABLE = "LSTMMT_TRACEBACK"


def friendly(command: Callable) -> Callable:
    """Turn UserError into one message and exit 1; Ctrl-C outside training into exit 130; an
    internal error into a short message (the traceback with LSTMMT_TRACEBACK=1) and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        utf8_stdout()
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            stderr.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `lstmmt translate ... | head`
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:  # no space, read-only, permission: the one place they become a line
            if os.environ.get(TRACEBACK_VARIABLE):
                raise
            stderr.print(Text.assemble(("error: ", "bold red"), io_error_message(exc)), soft_wrap=True)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.ClickException,
                click.exceptions.Abort):
            raise  # exit statuses and usage errors the command chose; click reports them
        except Exception as exc:
            if os.environ.get(TRACEBACK_VARIABLE):
                raise
            stderr.print(Text.assemble(("internal error: ", "bold red"), f"{type(exc).__name__}: {first_line(exc)}"),
                         soft_wrap=True)
            stderr.print(f"This is a bug in lstmmt or a library it uses. Run again with {TRACEBACK_VARIABLE}=1 for the "
                         "full traceback, and please report it.", soft_wrap=True, markup=False)
            raise typer.Exit(1) from None

    return wrapper


def utf8_stdout() -> None:
    """Write stdout in UTF-8 whatever the locale or PYTHONIOENCODING say: translations are
    UTF-8 like the files lstmmt writes, and a stdout that cannot encode them (ASCII, a C
    locale) must neither lose them nor end a command after its work is saved."""
    if isinstance(sys.stdout, io.TextIOWrapper) and codecs.lookup(sys.stdout.encoding).name != "utf-8":
        sys.stdout.reconfigure(encoding="utf-8")


def build_config(base: Config, config_file: Path | None, overrides: list[str] | None) -> Config:
    config = base
    if config_file is not None:
        config = config.merged(read_yaml(config_file))
    return config.with_overrides(overrides or [])


@app.command()
@friendly
def preprocess(
    run_dir: Path = RunArg,
    src_lang: str = typer.Option(..., "--src-lang", help="Source language code; also the file suffix (PREFIX.en)."),
    tgt_lang: str = typer.Option(..., "--tgt-lang", help="Target language code; also the file suffix (PREFIX.de)."),
    train: str | None = typer.Option(None, help="Training data: PREFIX of PREFIX.SRC/PREFIX.TGT (plain or .gz), "
                                     "or a .tsv/.jsonl file."),
    valid: str | None = typer.Option(None, help="Validation data, as --train. Used for BLEU-based "
                                     "checkpoint selection and early stopping."),
    test: str | None = typer.Option(None, help="Test data, as --train. Stored for `lstmmt evaluate --split test`."),
    dataset: str | None = typer.Option(None, help="A Hugging Face datasets name or a folder written by save_to_disk "
                                       "(instead of --train)."),
    dataset_config: str | None = typer.Option(None, help="The datasets configuration name, e.g. de-en."),
    train_split: str = typer.Option("train", help="With --dataset: the training split."),
    valid_split: str = typer.Option("validation", help="With --dataset: the validation split (skipped if absent)."),
    test_split: str = typer.Option("test", help="With --dataset: the test split (skipped if absent)."),
    streaming: bool = typer.Option(False, "--streaming", help="With --dataset: stream the dataset instead of "
                                   "downloading and converting it whole first (for corpora too large for the disk or "
                                   "memory; hub names and data files)."),
    vocab_size: int | None = typer.Option(None, help=option_help("tokenizer.vocab_size", "Vocabulary size")),
    model_type: str | None = typer.Option(None, help=option_help("tokenizer.model_type", "SentencePiece model")),
    config_file: Path | None = ConfigOpt,
    overrides: list[str] | None = SetOpt,
    force: bool = typer.Option(False, "--force", help="Redo preprocessing of a run that already has it."),
    tokenizer_from: Path | None = typer.Option(None, "--tokenizer-from", help="A run or release whose SentencePiece "
                                                  "model(s) to use (copied) instead of training new ones, so its model "
                                                  "can be fine-tuned on this corpus (train --init-from)."),
) -> None:
    """Read, clean and tokenize a parallel corpus; train SentencePiece; store the encoded corpus."""
    from lstmmt.preprocess import kept_settings, preprocess as run_preprocess, with_parent_tokenizer
    from lstmmt.release import layout, open_parent

    sets = [f"data.src_lang={src_lang}", f"data.tgt_lang={tgt_lang}", *(overrides or [])]
    sets += [f"tokenizer.vocab_size={vocab_size}"] * (vocab_size is not None)
    sets += [f"tokenizer.model_type={model_type}"] * (model_type is not None)
    parent = layout(open_parent(tokenizer_from)) if tokenizer_from is not None else None
    base = kept_settings(RunDir(run_dir), force)
    config = build_config(with_parent_tokenizer(base, parent) if parent else base, config_file, sets)
    files = {"train": train, "valid": valid, "test": test}
    splits = {"train": train_split, "valid": valid_split, "test": test_split}
    sources = _corpus_sources(files, dataset, dataset_config, splits, streaming)
    run_preprocess(RunDir(run_dir), config, sources, force=force, parent=parent)



def _corpus_sources(files: dict[str, str | None], dataset: str | None, dataset_config: str | None,
                    splits: dict[str, str], streaming: bool) -> dict[str, Any]:
    """preprocess's sources: the --train/--valid/--test files, or the splits of one --dataset."""
    from lstmmt.corpus import dataset_source, file_source

    if dataset is not None:
        if any(files.values()):
            raise UserError("use either --dataset or --train/--valid/--test files, not both")
        return {name: dataset_source(dataset, dataset_config, split, required=name == "train", streaming=streaming)
                for name, split in splits.items()}
    if streaming:
        raise UserError("--streaming applies to --dataset sources; files given with --train "
                        "are always read as a stream")
    if files["train"] is None:
        raise UserError("no training data: pass --train PREFIX (or a .tsv/.jsonl file) or --dataset NAME")
    return {name: file_source(path) for name, path in files.items() if path}


@app.command()
@friendly
def train(
    run_dir: Path = RunArg,
    config_file: Path | None = ConfigOpt,
    overrides: list[str] | None = SetOpt,
    max_steps: int | None = typer.Option(None, help="Stop after this many steps (train.max_steps)."),
    max_time: str | None = typer.Option(None, help="Stop after this much training time, "
                                        "e.g. 90s, 30m, 2h (train.max_time)."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N (train.device)."),
    restart: bool = typer.Option(False, "--restart", help="Delete this run's checkpoints and start again instead of "
                                 "resuming (from scratch, or from the parent train.init_from names)."),
    init_from: Path | None = typer.Option(
        None, "--init-from", metavar="PARENT", help="Start from the weights of PARENT: a run directory (its best "
        "checkpoint), a checkpoint file or a release; a fresh optimizer and schedule, the parent's model settings. The "
        "run must share its tokenizer (preprocess --tokenizer-from PARENT). Later starts resume (train.init_from)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine: relaunches the "
                              "command under `torchrun --standalone --nproc_per_node N` (one process per GPU, or CPU "
                              "processes with gloo)."),
) -> None:
    """Train the model, resuming from the newest checkpoint when there is one.

    For several GPUs or machines, launch it with torchrun: `torchrun --nproc_per_node N -m lstmmt train RUN`.
    """
    run = RunDir(run_dir)
    run.require_preprocessed()
    if os.environ.get("RANK", "0") == "0":  # before the slow imports, so a second train fails at once
        run.check_unlocked("train")
    from lstmmt.checkpoint import load_parent
    from lstmmt.device import resolve_device
    from lstmmt.distributed import check_gpus_for
    from lstmmt.train import FAILED_STOPS, train as run_train

    sets = list(overrides or [])
    sets += [f"train.max_steps={max_steps}"] * (max_steps is not None)
    sets += [f"train.max_time={max_time}"] * (max_time is not None)
    sets += [f"train.device={device}"] * (device is not None)
    parent = load_parent(init_from) if init_from is not None else None
    base = Config.load(run.config)
    config = build_config(parent.child_config(base) if parent else base, config_file, sets)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_gpus_for(nproc, resolve_device(config.train.device))
        relaunch_under_torchrun(nproc)
    state = run_train(run, config, restart=restart, parent=parent)
    if state.stopped in FAILED_STOPS:  # non-zero, so make does not take the model as finished
        raise typer.Exit(FAILED_STOPS[state.stopped])


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process with torchrun running the same command line, less --nproc, on nproc ranks."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        if not skip:
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lstmmt", *args]
    stderr.print(" ".join(command[1:]))
    sys.stdout.flush()
    os.execv(sys.executable, command)


CheckpointsOpt = typer.Option(["best"], "--checkpoint", help="best, last, averaged, or a checkpoint path; repeat it "
                              "for an ensemble (mean of the models' log-probabilities; checkpoints of runs that share "
                              "this run's tokenizer).")
DeviceOpt = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
BeamOpt = typer.Option(None, "--beam", help=option_help("decode.beam_size", "Beam size"))
LengthPenaltyOpt = typer.Option(None, help=option_help("decode.length_penalty", "Rank hypotheses by log-probability / "
                                                       "length ** this; 0 ranks by log-probability alone"))
PrecisionOpt = typer.Option(None, help=option_help("decode.precision", "Search precision: auto searches in bf16 where "
                                                   "the device runs it natively (GPUs, CPUs with AVX512-BF16 or AMX), "
                                                   "else fp32"))
BatchTokensOpt = typer.Option(None, help=option_help("decode.batch_tokens", "Source tokens x beam per batch"))
ShortlistOpt = typer.Option(None, "--shortlist/--no-shortlist", help="Search over the vocabulary shortlist in "
                            "RUN/shortlist.npz (write it with `lstmmt shortlist RUN`): faster on CPUs, may change "
                            "translations (decode.shortlist).")
QuantizeOpt = typer.Option(None, "--quantize", help=option_help("decode.quantize", "int8: int8 weights for the LSTMs "
                                                                 "and Linear layers, CPU only"))
OUTPUT_HELP = ("Output file, FIFO or device; - for stdout (always UTF-8). A file appears only once complete; a symlink "
               "stays a link; an input or a file of the run is refused.")
DecodeConfigOpt = typer.Option(None, "--config", help="YAML file with a decode section laid over the "
                               "run's decode settings.")
DecodeSetOpt = typer.Option(None, "--set", help="Override one decode key, e.g. --set decode.max_len_a=1.2 "
                            "(repeatable; see docs/config.md).")


def _decode_only(config_file: Path | None, overrides: list[str] | None) -> list[str]:
    """The --set assignments of a command that takes decode settings only; its --config may hold
    only a decode section."""
    for assignment in overrides or []:
        if not assignment.strip().startswith("decode."):
            raise UserError(f"this command takes decode settings only: --set decode.KEY=VALUE, got {assignment!r}")
    if config_file is not None and set(read_yaml(config_file)) - {"decode"}:
        raise UserError(f"{config_file}: this command reads only a decode section, "
                        f"found {', '.join(read_yaml(config_file))}")
    return list(overrides or [])


def given(**options: Any) -> dict[str, Any]:
    """The typed options the user gave (those left out are None)."""
    return {key: value for key, value in options.items() if value is not None}


def open_model(run_dir: Path) -> tuple[RunDir | Release, Config]:
    """A command's run directory or release, and its config, read once."""
    from lstmmt.release import layout, open_source

    source = open_source(run_dir)
    return source, Config.load(layout(source).config)


def command_decode(config: Config, config_file: Path | None, overrides: list[str] | None,
                   **options: Any) -> DecodeConfig:
    """A command's decode settings, built once: the run's or release's < --config < --set < the typed
    options (--beam, ...), all checked by the config."""
    decode = build_config(config, config_file, _decode_only(config_file, overrides)).decode
    return decode.updated(**given(**options))


def load_translator(doing: str, source: RunDir | Release, checkpoints: list[str], device: str,
                    decode: DecodeConfig) -> Translator:
    """The Translator of a command, searching with its `decode`; "`doing` on DEVICE in PRECISION" printed."""
    from lstmmt.linestream import warn
    from lstmmt.translator import Translator

    translator = Translator.load(source, checkpoints, device, decode=decode, warn=warn)
    narrowed = f", over the shortlist ({translator.shortlist.summary()})" if translator.shortlist is not None else ""
    stderr.print(f"{doing} on {translator.device} in {translator.precision}{narrowed}", soft_wrap=True, markup=False)
    return translator


@app.command()
@friendly
def translate(
    run_dir: Path = RunArg,
    input: str = typer.Option("-", "--input", "-i", help="Input file, pipe or device, one sentence a line; - for "
                              "stdin. Lines are answered as soon as input pauses (an interactive filter)."),
    output: str = typer.Option("-", "--output", "-o", help=OUTPUT_HELP),
    beam: int | None = BeamOpt,
    n_best: int | None = typer.Option(None, "--n-best", help=option_help("decode.n_best", "Write the K best "
                                                                            "translations per line as "
                                                                            "`line ||| text ||| score`")),
    length_penalty: float | None = LengthPenaltyOpt,
    precision: str | None = PrecisionOpt,
    batch_tokens: int | None = BatchTokensOpt,
    checkpoint: list[str] = CheckpointsOpt,
    device: str = DeviceOpt,
    config_file: Path | None = DecodeConfigOpt,
    overrides: list[str] | None = DecodeSetOpt,
    output_format: str = typer.Option("text", "--format", help="text (one translation, or the n-best rows, per line) "
                                      "or jsonl (one JSON object per line: text, score, log_prob, n_best; see "
                                      "docs/api.md)."),
    alignment: bool = typer.Option(False, "--alignment", help="With --format jsonl: add the attention weights over "
                                   "source and target pieces and a hard word alignment."),
    shortlist: bool | None = ShortlistOpt,
    quantize: str | None = QuantizeOpt,
) -> None:
    """Translate text with beam search: one output line per input line, in order."""
    from lstmmt.linestream import check_paths, translate_file

    check_paths([input], output, RunDir(run_dir))
    source, config = open_model(run_dir)
    decode = command_decode(config, config_file, overrides, beam_size=beam, n_best=n_best,
                            length_penalty=length_penalty, precision=precision, batch_tokens=batch_tokens,
                            shortlist=shortlist, quantize=quantize)
    translator = load_translator("Translating", source, checkpoint, device, decode)
    lines = translate_file(translator, input, output, output_format, alignment)
    if output != "-":
        stderr.print(f"Translated {lines:,} lines into {output}", soft_wrap=True, markup=False)


@app.command()
@friendly
def shortlist(
    run_dir: Path = RunArg,
    per_source: int = typer.Option(20, "--per-source", min=0, help="Candidate target pieces kept per source piece "
                                   "(best Dice score first)."),
    frequent: int = typer.Option(100, "--frequent", min=0, help="Most frequent target pieces, always allowed."),
) -> None:
    """Write RUN/shortlist.npz, the vocabulary shortlist of `translate --shortlist`, from the run's training data.

    A batch may produce the specials, the --frequent most frequent target pieces and the
    --per-source candidates of each of its source pieces, by Dice score of sentence-pair
    co-occurrence counts (see lstmmt/shortlist.py). Run it again after preprocess --force.
    """
    from lstmmt import shortlist as shortlists
    from lstmmt.encoded import EncodedSide

    run = RunDir(run_dir)
    built = shortlists.build(run, per_source, frequent)
    built.save(run.shortlist)
    stderr.print(f"Wrote {run.shortlist}: {built.summary()} (Dice over {built.meta['train_pairs']:,} training pairs; "
                 f"{built.meta['src_vocab']:,} source pieces)", soft_wrap=True, markup=False)
    if run.has_split("valid"):
        size, covered = shortlists.coverage(built, EncodedSide.open(run, "valid", "src"),
                                            EncodedSide.open(run, "valid", "tgt"))
        stderr.print(f"On the valid split, batches of 64 sentences allow {size:,.0f} of "
                     f"{built.meta['tgt_vocab']:,} target pieces "
                     f"on average and cover {100 * covered:.2f}% of the reference tokens", soft_wrap=True, markup=False)


@app.command()
@friendly
def score(
    run_dir: Path = RunArg,
    src: str = typer.Option(..., "--src", help="Source sentences, one a line (a file, a pipe, or - for stdin)."),
    tgt: str = typer.Option(..., "--tgt", help="Their translations, line N of --tgt for line N of --src."),
    output: str = typer.Option("-", "--output", "-o", help=OUTPUT_HELP),
    length_penalty: float | None = LengthPenaltyOpt,
    batch_tokens: int | None = typer.Option(None, help=option_help("decode.batch_tokens", "Tokens per batch of "
                                                                   "sentence pairs (the longer side, padded)")),
    checkpoint: list[str] = CheckpointsOpt,
    device: str = DeviceOpt,
    config_file: Path | None = DecodeConfigOpt,
    overrides: list[str] | None = DecodeSetOpt,
) -> None:
    """Score given translations by forced decoding: one line `score<TAB>log_prob` per sentence pair.

    log_prob sums the log-probabilities of the target's tokens and EOS; score divides it by
    tokens ** decode.length_penalty, as search ranks hypotheses.
    """
    from lstmmt.linestream import check_paths, score_file

    check_paths([src, tgt], output, RunDir(run_dir))
    source, config = open_model(run_dir)
    decode = command_decode(config, config_file, overrides, length_penalty=length_penalty, batch_tokens=batch_tokens)
    translator = load_translator("Scoring", source, checkpoint, device, decode)
    lines = score_file(translator, src, tgt, output)
    if output != "-":
        stderr.print(f"Scored {lines:,} pairs into {output}", soft_wrap=True, markup=False)


@app.command("plot-attention")
@friendly
def plot_attention(
    run_dir: Path = RunArg,
    sentence: str = typer.Argument(..., help="The source sentence to translate.", show_default=False),
    output: Path = typer.Option(Path("attention.png"), "--output", "-o", help="Where to write the PNG (a file, FIFO or "
                                "device; a file of the run is refused)."),
    beam: int | None = BeamOpt,
    checkpoint: list[str] = CheckpointsOpt,
    device: str = DeviceOpt,
    config_file: Path | None = DecodeConfigOpt,
    overrides: list[str] | None = DecodeSetOpt,
) -> None:
    """Translate one sentence and draw its attention as a heatmap, source and target pieces as labels (needs matplotlib)."""  # noqa: E501
    from lstmmt.attention_plot import plot_attention as draw
    from lstmmt.rundir import check_output

    check_output(output, run=RunDir(run_dir))
    source, config = open_model(run_dir)
    decode = command_decode(config, config_file, overrides, beam_size=beam, n_best=1)
    translator = load_translator("Translating", source, checkpoint, device, decode)
    translation = translator.translate([sentence], alignment=True)[0]
    if translation.alignment is None:
        raise UserError("the sentence has nothing to translate")
    draw(translation.alignment, output)
    stdout.print(translation.text, markup=False, soft_wrap=True)
    stderr.print(f"Wrote {output}", markup=False, soft_wrap=True)


@app.command()
@friendly
def serve(
    run_dir: Path = RunArg,
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 or :: for every interface (the API has "
                             "no authentication: put it behind a proxy before exposing it)."),
    port: int = typer.Option(5000, help="TCP port; 0 picks a free one (the address is printed)."),
    beam: int | None = BeamOpt,
    n_best: int | None = typer.Option(None, "--n-best", help="Candidates per sentence in native answers unless a "
                                      "request asks otherwise (decode.n_best)."),
    length_penalty: float | None = LengthPenaltyOpt,
    precision: str | None = PrecisionOpt,
    batch_tokens: int | None = BatchTokensOpt,
    checkpoint: list[str] = CheckpointsOpt,
    device: str = DeviceOpt,
    config_file: Path | None = DecodeConfigOpt,
    overrides: list[str] | None = DecodeSetOpt,
    threads: int | None = typer.Option(None, help="CPU threads for the search (torch.set_num_threads; "
                                       "default: torch's choice)."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Search the sentences of requests that wait "
                                  "together as one batch (answers do not change), or one request at a time."),
    batch_sentences: int = typer.Option(64, help="The most sentences searched together across requests, at the "
                                        "server's beam size (a larger request is searched a slice at a time)."),
    queue_size: int = typer.Option(64, help="Requests that may wait for the model besides those being searched; "
                                   "beyond that the answer is 503 with Retry-After."),
    max_body: int = typer.Option(1_048_576, help="Largest request body in bytes; larger ones get 413."),
    max_sentences: int = typer.Option(100, help="Most sentences (lines) in one request; more get 400."),
    max_beam: int = typer.Option(16, help="Largest beam_size a request of the native API may ask for."),
    timeout: float = typer.Option(30.0, help="Seconds a client has to send a request's headers, and again its body; "
                                  "then the connection is closed (a late body gets 408)."),
    max_connections: int = typer.Option(512, help="Open connections served at once; requests on more get 503."),
    shutdown_timeout: float = typer.Option(60.0, help="On SIGTERM or Ctrl-C, seconds to wait for requests in flight."),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request on stderr."),
    shortlist: bool | None = ShortlistOpt,
    quantize: str | None = QuantizeOpt,
) -> None:
    """Serve translations over HTTP: LibreTranslate's API, a native API with n-best and alignments, a web page (docs/serve.md).

    Needs the serve extra: pip install 'lstmmt\\[serve]', or in a checkout pip install -e '.\\[serve]'.
    SIGTERM stops accepting, answers the requests in flight and exits 0."""  # noqa: E501 (the first line is the command's one-line help; a break would show in docs/cli.md)
    from lstmmt.serve import startup
    from lstmmt.serve.requests import Limits, Model

    limits = Limits(max_body, max_sentences, queue_size, batch_sentences, max_beam, batching, timeout, max_connections)
    startup.prepare(limits, host, port, shutdown_timeout, threads)
    source, config = open_model(run_dir)
    decode = command_decode(config, config_file, overrides, beam_size=beam, n_best=n_best,
                            length_penalty=length_penalty, precision=precision, batch_tokens=batch_tokens,
                            shortlist=shortlist, quantize=quantize)
    translator = load_translator("Serving", source, checkpoint, device, decode)
    model = Model(config.data.src_lang, config.data.tgt_lang, list(checkpoint))
    startup.serve(translator, model, limits, host, port, shutdown_timeout, access_log, startup.stderr_log)


@app.command()
@friendly
def evaluate(
    run_dir: Path = RunArg,
    hyp: Path | None = typer.Option(None, help="Hypothesis file (detokenized, one line per reference line)."),
    ref: Path | None = typer.Option(None, help="Reference file."),
    split: str | None = typer.Option(None, help="Score a stored split (valid or test), translating it first "
                                     "unless a translation with the same options exists and is newer than its "
                                     "checkpoint (and shortlist)."),
    beam: int | None = typer.Option(None, "--beam", help="With --split: beam size for the translation."),
    checkpoint: str = typer.Option("best", help="With --split: best, last, averaged, or a checkpoint path."),
    device: str = typer.Option("auto", help="With --split: auto, cpu, cuda or cuda:N."),
    shortlist: bool | None = ShortlistOpt,
    quantize: str | None = QuantizeOpt,
    name: str | None = typer.Option(None, "--name", help="With --hyp: save as RUN/scores/NAME.json (default: "
                                    "hyp-STEM.HASH.json, from the whole hypothesis path). Never replaces another "
                                    "hypothesis's score."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON instead of a table."),
) -> None:
    """BLEU, chrF and TER with sacrebleu, saved with their signatures under RUN/scores/ (for --split:
    split-NAME.json, named after the translation RUN/translations/NAME.hyp it scores)."""
    from lstmmt.evaluate import evaluate_files, evaluate_split

    run = RunDir(run_dir)
    if split is not None:
        if hyp or ref or name:
            raise UserError("use either --split or --hyp/--ref [--name], not both")
        result = evaluate_split(run, split, checkpoint, device, **given(beam_size=beam, shortlist=shortlist,
                                                                        quantize=quantize))
    elif hyp is not None and ref is not None:
        result = evaluate_files(run, hyp, ref, name=name)
    else:
        raise UserError("pass --hyp FILE --ref FILE, or --split test")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['lines']:,} lines")
    for column in ("metric", "score", "sacrebleu signature"):
        table.add_column(column)
    names = {"bleu": "BLEU", "bleu_lowercase": "BLEU, lowercased", "chrf": "chrF", "ter": "TER"}
    for metric in (metric for metric in names if metric in result):
        table.add_row(names[metric], f"{result[metric]:.2f}", result["signatures"][metric])
    stdout.print(table)


@app.command()
@friendly
def average(
    run_dir: Path = RunArg,
    last: int | None = typer.Option(None, help="Average the N newest step-N.pt checkpoints."),
    best: int | None = typer.Option(None, help="Average the N checkpoints with the best validation BLEU "
                                    "among the kept ones."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write (default "
                                       "RUN/checkpoints/averaged.pt); best.pt, last.pt, step-N.pt, other training "
                                       "checkpoints and the inputs are refused."),
    check: bool = typer.Option(True, "--check/--no-check", help="Score the average and best.pt on the validation split "
                               "(greedy BLEU) and write best.pt's weights instead if the average scores lower."),
    device: str = typer.Option("auto", help="With --check: auto, cpu, cuda or cuda:N."),
) -> None:
    """Average checkpoints into one model (use it with --checkpoint averaged); never worse than best.pt on val."""
    from lstmmt import checkpoint
    from lstmmt.averaging import average_checkpoints

    run = RunDir(run_dir)
    run.require_checkpoint()
    with run.lock("average"):
        paths = checkpoint.select_for_average(run, last=last, best=best)
        if len(paths) < (last or best or 0):
            stderr.print(Text(f"{run.checkpoints} keeps {len(paths)} step checkpoints, "
                              f"fewer than the {last or best} asked for: averaging those"), soft_wrap=True)
        result = average_checkpoints(run, paths, output or run.checkpoint("averaged"), device, check)
    stderr.print(Text(result.summary()), soft_wrap=True)


@app.command()
@friendly
def plot(
    run_dir: Path = RunArg,
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write the PNG (default "
                                       "RUN/logs/learning_curve.png)."),
) -> None:
    """Plot validation BLEU and loss against step and training time as a PNG (needs matplotlib)."""
    from lstmmt.plot import plot_learning_curve

    stderr.print(f"Wrote {plot_learning_curve(RunDir(run_dir), output)}", markup=False)


@app.command()
@friendly
def export(
    run_dir: Path = RunArg,
    output: Path = typer.Option(..., "--output", "-o", help="The release: a new folder, or a file ending in .tar.gz."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, averaged, or a checkpoint path."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or bf16 (half the size; loaded as fp32 weights rounded "
                              "to bf16)."),
    license: str | None = typer.Option(None, "--license", help="The license to state in the model card."),
    description: str | None = typer.Option(None, "--description", help="A paragraph for the top of the model card."),
    config_file: Path | None = DecodeConfigOpt,
    overrides: list[str] | None = DecodeSetOpt,
) -> None:
    """Write a release: the weights (safetensors), tokenizer, config, shortlist and a model card, no optimizer
    state or corpus. translate, score, serve, plot-attention and Translator.load take it in place of a run."""
    from lstmmt.release import export as write_release

    if dtype not in ("fp32", "bf16"):
        raise UserError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    run = RunDir(run_dir)
    run.require_checkpoint()
    decode = command_decode(Config.load(run.config), config_file, overrides)
    written = write_release(run, output, checkpoint, dtype, decode, license, description)
    stderr.print(f"Wrote the release {written}", soft_wrap=True, markup=False)


@app.command()
@friendly
def info(run_dir: Path = RunArg) -> None:
    """Show what a run directory holds (config, data, tokenizer, checkpoints, scores), or a release
    (`lstmmt export`: its manifest, model and decode settings)."""
    from lstmmt.info import describe

    stdout.print(describe(run_dir))


def main() -> None:
    app()
