"""Typed configuration: one dataclass per section, YAML load/save and `--set` overrides.

The config is built once (defaults < YAML file < `--set key=value`), validated as a
whole, and passed down; nothing below reads options from anywhere else. Unknown keys
and ill-typed values are errors that list what is allowed, never silently dropped.

Each key is declared once, by `setting()` in its dataclass: default, type, help and allowed
values. The range checks, the defaults quoted in command-line help and the tables of
docs/config.md (`python -m lstmmt.configdoc`) are all derived from that declaration.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from lstmmt.errors import UserError, first_line

Bound = int | float | str | None
"""A range bound: a number, the name of another key of the same section, or None (no bound)."""


@dataclass(frozen=True)
class Allowed:
    """The values a setting allows, as declared with its field. Numeric bounds are checked by
    `check_ranges`; `words` describes values checked elsewhere (such as durations)."""

    low: Bound = None
    high: Bound = None
    open_low: bool = False  # low itself is not allowed
    open_high: bool = False  # high itself is not allowed
    note: str = ""  # read after the bounds, e.g. "(0 = never stop early)"
    null: str = ""  # what null means, for a setting that may be null
    words: str = ""  # the allowed values in words, where no bounds check them (durations, devices)

    def admits(self, value: float, section: Any) -> bool:
        """Whether `value` lies within the bounds (a bound naming a key takes that key's value in
        `section`); NaN and infinities never do."""
        low, high = (getattr(section, b) if isinstance(b, str) else b for b in (self.low, self.high))
        if low is not None and (value <= low if self.open_low else value < low):
            return False
        if high is not None and (value >= high if self.open_high else value > high):
            return False
        return not (isinstance(value, float) and not math.isfinite(value))  # NaN compares false above

    def describe(self, where: str, section: Any = None) -> str:
        """The allowed values in words, e.g. "in (0, 1]" or ">= 1 (or null: chosen by the device)";
        a bound naming a key reads `where.key`, followed by its value in `section` when given."""
        low, high = (self._bound(b, where, section) for b in (self.low, self.high))
        if low is not None and high is not None:
            bounds = f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        elif low is not None:
            bounds = f"{'>' if self.open_low else '>='} {low}"
        elif high is not None:
            bounds = f"{'<' if self.open_high else '<='} {high}"
        else:
            bounds = self.words
        return " ".join(part for part in (bounds, self.note, self.null and f"(or null: {self.null})") if part)

    @staticmethod
    def _bound(bound: Bound, where: str, section: Any) -> str | None:
        if not isinstance(bound, str):
            return None if bound is None else str(bound)
        return f"{where}.{bound}" + (f" ({shown(getattr(section, bound))})" if section is not None else "")


def setting(default: Any, help: str, *, low: Bound = None, high: Bound = None, above: Bound = None,
            below: Bound = None, note: str = "", null: str = "", words: str = "") -> Any:
    """A config field declared once: its default, its help (Markdown, as docs/config.md shows it)
    and its allowed values: low <= value <= high, above < value < below, with an optional note,
    the meaning of null, or `words` for values not checked by bounds."""
    allowed = Allowed(low=low if above is None else above, high=high if below is None else below,
                      open_low=above is not None, open_high=below is not None, note=note, null=null, words=words)
    return field(default=default, metadata={"help": help, "allowed": allowed})


BYTES_PER_TOKEN = 64
"""Bytes of text per source token that `DecodeConfig.line_bytes` allows: far more than any
script's subword takes (a CJK piece is a few bytes)."""

MAX_THREADS = 1024
"""The most CPU threads a setting may ask for: more than any machine has cores; far more would
only exhaust what the system allows a process (a RuntimeError, then a crash)."""

DURATION = "a duration > 0 such as 90s, 30m, 1.5h, 2d or a number of seconds"
"""What `parse_duration` reads."""


@dataclass
class DataConfig:
    """What preprocess reads and how it cleans it."""

    src_lang: str = setting("src", "source language code (set by `--src-lang`); also the corpus file suffix")
    tgt_lang: str = setting("tgt", "target language code (set by `--tgt-lang`)")
    max_tokens: int = setting(200, "training pairs with a side longer than this many subword tokens are dropped",
                              low=1)
    max_ratio: float = setting(3.0, "training pairs whose token-length ratio (longer / shorter side) exceeds this "
                                    "are dropped", low=1)


@dataclass
class TokenizerConfig:
    """SentencePiece settings."""

    vocab_size: int = setting(8000, "pieces per model (set by `--vocab-size`); too large for the data gives an error "
                                    "with the largest workable size", low=8)
    model_type: Literal["unigram", "bpe"] = setting("unigram", "SentencePiece's model type (set by `--model-type`)")
    joint: bool = setting(True, "one model for both languages (`tokenizer/spm.model`; needed for tied source and "
                                "target embeddings), else `src.model` and `tgt.model`")
    character_coverage: float = setting(1.0, "share of characters the model must cover (lower, e.g. 0.9995, for "
                                             "scripts with many rare characters)", above=0, high=1)
    input_sentence_size: int = setting(1_000_000, "SentencePiece trains on a random sample of at most this many "
                                                  "sentences per model", low=1)
    sample_alpha: float = setting(
        0.0, "subword regularisation (Kudo 2018; BPE-dropout for `bpe`): besides its usual segmentation, preprocess "
        "stores `sample_variants` segmentations of each training pair drawn by SentencePiece with this smoothing "
        "(unigram: lower draws more varied pieces, e.g. 0.3; bpe: the merge-dropout probability, e.g. 0.1), and each "
        "training epoch reads one of them, chosen from (`train.seed`, epoch). Validation, test and translation always "
        "use the usual segmentation", low=0, high=1, note="(0 = off)")
    sample_variants: int = setting(
        4, "with `sample_alpha`: sampled segmentations stored per training pair (each as large on disk as the "
        "encoded training data)", low=1)

    SAMPLING: ClassVar[tuple[str, ...]] = ("sample_alpha", "sample_variants")
    """The keys that only change how training text is segmented, not the SentencePiece model:
    a run taking another's tokenizer (`--tokenizer-from`) may set them its own way."""


@dataclass
class ModelConfig:
    """The attentional encoder-decoder; see lstmmt/model.py."""

    embed_size: int = setting(256, "embedding size", low=1)
    hidden_size: int = setting(512, "decoder size and encoder output size (each encoder direction has half)",
                               low=2, note="and even")
    encoder_layers: int = setting(2, "bidirectional LSTM layers of the encoder", low=1)
    decoder_layers: int = setting(1, "LSTM layers of the decoder", low=1)
    dropout: float = setting(0.3, "on embeddings, between LSTM layers, on LSTM outputs and before the output layer",
                             low=0, below=1)
    attention: Literal["luong", "dot", "bahdanau"] = setting(
        "luong", "`luong` (general, bilinear), `dot`, or `bahdanau` (MLP)")
    input_feeding: bool = setting(False, "feed the previous attentional state into the decoder; the decoder then runs "
                                         "step by step in training (slower)")
    tie_embeddings: bool = setting(True, "the output layer shares the target embeddings; with a joint tokenizer source "
                                         "and target embeddings are shared too")
    init: Literal["uniform", "pytorch"] = setting(
        "uniform", "initial weights: `uniform` (every parameter from U(-init_range, init_range), as OpenNMT-py does) "
        "or `pytorch` (each layer's PyTorch default; embeddings N(0, 1/embed_size)). `uniform` learns much faster "
        "early on: Multi30k val BLEU 22.7 vs 10.6 at step 400, test BLEU 37.1 vs 34.3 after 12 minutes "
        "(docs/results.md). Runs made before this key existed used `pytorch`")
    init_range: float = setting(0.1, "r of `init: uniform`", above=0)


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpointing."""

    seed: int = setting(1, "seeds initialisation, dropout and the batch order", low=0, high=2**32 - 1)
    batch_tokens: int | None = setting(
        None, "padded tokens per batch (longest side + 1, times sentences); null: the device chooses when training "
        "starts (2,048 on a CPU, 16,384 on a GPU) and the choice is written into `config.yaml`, so a resumed run keeps "
        "it on any device", low=1, null="chosen by the device")
    accumulate: int = setting(
        1, "token-budget batches per optimizer step (gradient accumulation): their gradients are summed and the "
        "loss is normalised over all of them, so a step sees `batch_tokens` x this tokens on the memory of one batch; "
        "steps (`max_steps`, schedules, `valid_every`, `log_every`, checkpoints) count optimizer steps. Under several "
        "processes the gradients are all-reduced once per step", low=1)
    window_sentences: int = setting(
        1_000_000, "sentences read, sorted by length and cut into batches together: training reads the corpus window "
        "by window (blocks of 1,000 consecutive sentences, shuffled each epoch and dealt into windows), so its memory "
        "grows with this, not with the corpus (~50 bytes a sentence); a corpus smaller than one window is batched "
        "whole. Larger windows mean less padding and more thorough shuffling", low=1)
    lr: float = setting(2e-3, "Adam learning rate after warm-up", above=0)
    warmup_steps: int = setting(200, "linear warm-up from 0", low=0)
    lr_schedule: Literal["auto", "constant", "inverse_sqrt", "plateau", "budget"] = setting(
        "auto", "after warm-up: `auto` is `budget` when `max_time` or `max_steps` bounds training and `plateau` when "
        "neither does; `constant`, `inverse_sqrt` (lr * sqrt(warmup / step)), `plateau` (multiply by "
        "`lr_decay_factor` after each validation without a better BLEU), or `budget`: linear decay from `lr` to "
        "`lr_min` over (the last `decay_share` of) the training budget, measured as the larger of step / `max_steps` "
        "and training time / `max_time` (time of all resumed sessions counts), so a short run ends on a low rate; "
        "warm-up ends after `warmup_steps` or 5% of the budget, whichever comes first")
    decay_share: float = setting(
        0.3, "with `budget`: the final share of the budget over which the rate decays to `lr_min`; before it the rate "
        "holds at `lr`. 1.0 decays from the start (linear decay); 0.3 holds the peak for 70% of the budget and decays "
        "over the last 30% (warm-up, stable, decay)", above=0, high=1)
    lr_decay_factor: float = setting(0.5, "plateau decay factor", above=0, high=1)
    lr_min: float = setting(1e-5, "plateau floor; where `budget` ends", low=0)
    clip_norm: float = setting(1.0, "gradient norm clipping", above=0)
    label_smoothing: float = setting(0.1, "label-smoothed cross-entropy", low=0, below=1)
    max_steps: int | None = setting(None, "stop after this many updates (`--max-steps`)", low=1, null="no limit")
    max_epochs: int = setting(1000, "stop after this many passes over the data", low=1)
    max_time: str | None = setting(
        None, "training-time budget (`--max-time`), summed over resumed sessions; training validates and stops when "
        "it is spent", words=DURATION, null="no limit")
    valid_every: int = setting(1000, "validate (loss, perplexity, greedy BLEU) and save checkpoints every this many "
                                     "steps", low=1)
    valid_every_time: str | None = setting(
        "5m", "also validate when this much training time (e.g. `5m`) has passed since the last validation, so a slow "
        "machine validates often enough to pick a good checkpoint; each validation's cost is logged as `seconds` in "
        "`metrics.jsonl`", words=DURATION, null="by steps only")
    patience: int = setting(8, "stop after this many validations without a better BLEU", low=0,
                            note="(0 = never stop early)")
    keep_checkpoints: int = setting(5, "`step-N.pt` files kept besides `last.pt` and `best.pt`", low=0)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "`auto` trains in bf16 where the device runs it natively (CUDA GPUs with bf16 units; CPUs whose oneDNN "
        "has bf16 LSTM kernels: AVX512-BF16 or AMX), else in fp32, decided by a tiny bf16 LSTM step at start-up (see "
        "below); `bf16` runs the forward pass under bf16 autocast and is refused with one line where the device "
        "cannot train in it. Also the precision of validation search")
    log_every: int = setting(100, "steps between lines in `logs/metrics.jsonl` and progress updates", low=1)
    device: str = setting("auto", "CUDA when available, else the CPU (`--device`)", words="auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads for PyTorch", low=0, high=MAX_THREADS, note="(0 = torch's default)")
    init_from: str | None = setting(
        None, "the parent whose weights the run started from (set by `train --init-from PARENT`: a run directory's "
        "best checkpoint, a checkpoint file or a release): the first start of the run, and `--restart`, load them with "
        "a fresh optimizer and schedule; later starts resume from the run's own checkpoints",
        words="a path", null="trained from scratch")

    @property
    def bounded(self) -> bool:
        """Whether max_time or max_steps limits training (what `budget` decays over)."""
        return self.max_time is not None or self.max_steps is not None

    @property
    def schedule(self) -> str:
        """The learning-rate schedule in effect: `auto` resolved by whether training is bounded."""
        if self.lr_schedule != "auto":
            return self.lr_schedule
        return "budget" if self.bounded else "plateau"

    @functools.cached_property
    def max_time_seconds(self) -> float:
        """max_time in seconds (inf: no limit), parsed once: the schedule reads it every step."""
        return parse_duration(self.max_time) if self.max_time is not None else math.inf

    @functools.cached_property
    def valid_every_seconds(self) -> float:
        """valid_every_time in seconds (inf: validation by steps only), parsed once."""
        return parse_duration(self.valid_every_time) if self.valid_every_time is not None else math.inf


@dataclass
class DecodeConfig:
    """Search settings for validation, translate, score and the Translator API."""

    beam_size: int = setting(5, "beam size (`--beam`)", low=1, high=1000, note="(1 is greedy search)")
    n_best: int = setting(1, "hypotheses kept per sentence, best first (`--n-best`): `translate` writes "
                             "`line ||| text ||| score` rows, `--format jsonl` an `n_best` list; when sampling "
                             "(`sample_topk`), the number of samples drawn per sentence",
                          low=1, high=1000, note="(at most beam_size in beam search)")
    length_penalty: float = setting(
        1.0, "hypothesis score = log-probability / length ** length_penalty (`--length-penalty`; beyond its range "
        "length ** length_penalty overflows); 0 ranks by log-probability alone, larger values favour longer outputs, "
        "negative ones shorter; length counts EOS; `score` reports the same normalised score", low=-10, high=10)
    max_len_a: float = setting(1.5, "outputs stop at `max_len_a * source_length + max_len_b` tokens (EOS included, "
                                    "at least 1)", low=0, high=100)
    max_len_b: int = setting(10, "see `max_len_a`", low=0, high=10_000)
    batch_tokens: int | None = setting(
        None, "source tokens x beam per translation batch (`--batch-tokens`); `score` counts the longer side; null: "
        "chosen by the device (8,000 on a CPU, 32,768 on a GPU; on a CPU with `shortlist` at most 1,600 source "
        "tokens a batch, which searched greedily 1.26x faster than 8,000)", low=1, null="the device's default")
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "search precision (`--precision`): `auto` as for `train.precision` (see below); `bf16` casts the "
        "weights to bf16 once on CPU (emulated, and slower, on CPUs without bf16 units, which the command says) and "
        "uses autocast on GPUs; the command prints its choice; validation during training follows `train.precision`")
    max_source_tokens: int = setting(
        250, "longer inputs are truncated, with a warning naming the line. `translate` and `score` also read at most "
        "64 bytes per token of an input line (16,000 by default) and skip the rest, so memory stays bounded. Runs made "
        "before it moved here kept it as `model.max_source_tokens`: such config.yaml files and checkpoints still load, "
        "the value moved to `decode`", low=1)
    shortlist: bool = setting(
        False, "search over the vocabulary shortlist `RUN/shortlist.npz` (`--shortlist`; write it with `lstmmt "
        "shortlist RUN`, see below): each batch's output layer, log-softmax and top-k cover only the target pieces its "
        "source pieces allow, which is faster on CPUs and may change translations. A missing file is one error naming "
        "the command. Forced decoding (`score`, alignments) keeps the full vocabulary. Read by `translate`, `serve`, "
        "`evaluate --split` and `Translator.load`; validation during training (a Translator built around the "
        "in-memory model) searches the full vocabulary")
    quantize: Literal["none", "int8"] = setting(
        "none", "`int8` (`--quantize int8`): dynamic int8 quantisation (`torch.ao.quantization.quantize_dynamic`) of "
        "the LSTMs and Linear layers for CPU search, activations in fp32 (so `precision` must be `auto` or `fp32`; "
        "`auto` then means fp32). On a GPU it is refused. The tied output projection (the default, "
        "`model.tie_embeddings: true`) multiplies by the embedding matrix and stays fp32; with untied embeddings the "
        "output Linear is int8 too. Works with `shortlist`. Read by the same commands as `shortlist`")
    workers: int | None = setting(
        None, "batches searched at once on a CPU (`--set decode.workers=N`), each by its own thread with an equal "
        "share of torch's CPU threads (`OMP_NUM_THREADS`, `serve --threads`); null: one per torch thread, never more "
        "than there are batches, so a short input still gets every thread. Translations do not change (the same "
        "batches, searched alike). Search does small serial work between its matrix products (top-k, bookkeeping, "
        "copies); on a 2-core CPU two batches on one thread each searched 1.12-1.17x faster than one batch on two "
        "threads (docs/performance.md). On a GPU always 1. Validation during training uses it too",
        low=1, high=MAX_THREADS, null="one per CPU thread")
    sample_topk: int | None = setting(
        None, "sample translations instead of searching for the best (back-translation; `--set "
        "decode.sample_topk=0`): each output token is drawn from the model's next-token distribution, 0 from the "
        "whole of it, K from its K most likely tokens. Each sentence gets `n_best` independent samples (duplicates "
        "possible), best first by `score`, which is the model's own log-probability normalised as in beam search; "
        "`beam_size` is not used. Works with `shortlist` (samples among the pieces it allows) and ensembles (samples "
        "from their averaged distribution)", low=0, null="beam search")
    temperature: float = setting(
        1.0, "when sampling: tokens are drawn from softmax(log-probabilities / temperature); below 1 sharpens the "
        "distribution towards the most likely tokens, above 1 flattens it; scores keep the model's log-probabilities. "
        "Another value without `sample_topk` is refused", low=0.01, high=100)
    seed: int = setting(
        1, "when sampling: seeds the draws. The same seed, input and batch settings (`batch_tokens`) give the same "
        "samples on the same device, with any number of `workers`: each batch's draws are seeded from the seed and "
        "the batch's sentences",
        low=0, high=2**32 - 1)

    @property
    def hypotheses_per_sentence(self) -> int:
        """Hypotheses searched side by side per sentence, as a batch budget counts them: the beam, or the samples."""
        return self.beam_size if self.sample_topk is None else self.n_best

    def check(self) -> None:
        """Each setting within its declared range, named with its key (UserError otherwise). The
        length settings are bounded so search's arithmetic stays finite: length ** length_penalty
        for any output length, and max_len_a * source length + max_len_b as a token count;
        temperature so that log-probabilities / temperature stay finite in float32."""
        check_ranges(self, "decode")
        if self.sample_topk is not None:
            return
        if self.n_best > self.beam_size:
            raise UserError(f"decode.n_best must be an integer in [1, decode.beam_size ({self.beam_size})], got "
                            f"{self.n_best}: beam search keeps at most beam_size hypotheses (set decode.sample_topk "
                            "to draw any number of samples)")
        if self.temperature != 1.0:
            raise UserError(f"decode.temperature {shown(self.temperature)} applies only when sampling: set "
                            "decode.sample_topk (0 = the whole distribution) or leave decode.temperature at 1.0")

    @property
    def line_bytes(self) -> int:
        """The most bytes of an input line read (and characters of a preprocessed reference kept):
        BYTES_PER_TOKEN per max_source_tokens, so only a line the search would truncate anyway is cut."""
        return self.max_source_tokens * BYTES_PER_TOKEN

    def greedy(self) -> DecodeConfig:
        """These settings for greedy search (validation during training): beam 1, one hypothesis, no sampling."""
        return self.updated(beam_size=1, n_best=1, sample_topk=None, temperature=1.0)

    def updated(self, **values: Any) -> DecodeConfig:
        """These settings with `values` (decode keys) replaced, each type- and range-checked."""
        hints = typing.get_type_hints(DecodeConfig)
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise UserError(f"unknown decode setting(s) {', '.join(map(cut, unknown))}; valid: {', '.join(hints)}")
        typed = {key: _check_type(value, hints[key], f"decode.{key}") for key, value in values.items()}
        updated = dataclasses.replace(self, **typed)
        updated.check()
        return updated


@dataclass
class Config:
    """A run's whole configuration, one dataclass per section; what config.yaml holds."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> Config:
        """Range and cross-field checks, run before any data is touched or any file written."""
        for name in ("data", "tokenizer", "model", "train"):
            check_ranges(getattr(self, name), name)
        if self.model.hidden_size % 2:
            raise UserError("model.hidden_size must be even (each encoder direction gets half), "
                            f"got {shown(self.model.hidden_size)}")
        self._check_model_size()
        self.decode.check()
        _ = self.train.max_time_seconds, self.train.valid_every_seconds  # parsed here, once: a bad one fails now
        return self

    def _check_model_size(self) -> None:
        """Refuse a model too large to be meant (a typo such as hidden_size=1000000000 would try
        to allocate hundreds of gigabytes), from its parameter count before it is built."""
        from lstmmt.model import parameter_count

        vocab = self.tokenizer.vocab_size  # each side's vocabulary, joint or not
        count = parameter_count(self.model, vocab, vocab, self.tokenizer.joint)
        if count > MAX_PARAMETERS:
            m = self.model
            sizes = {"tokenizer.vocab_size": vocab, "model.embed_size": m.embed_size,
                     "model.hidden_size": m.hidden_size, "model.encoder_layers": m.encoder_layers,
                     "model.decoder_layers": m.decoder_layers}
            named = ", ".join(f"{key}={shown(value)}" for key, value in sizes.items())
            raise UserError(f"the model would have {Decimal(count):.3g} parameters, over the limit of "
                            f"{MAX_PARAMETERS:,} ({named}): lower these sizes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return _build(cls, _moved_keys(raw), "").validate()

    def save(self, path: Path) -> None:
        from lstmmt.rundir import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> Config:
        return cls.from_dict(read_yaml(path))

    def merged(self, raw: dict[str, Any]) -> Config:
        """This config with the (possibly partial) sections in `raw` laid over it."""
        base = self.to_dict()
        for section, values in _moved_keys(raw).items():
            if section not in base:
                raise UserError(f"unknown config section {shown(section)}; valid: {', '.join(base)}")
            if not isinstance(values, dict):
                raise UserError(f"config section {shown(section)} must be a mapping")
            base[section].update(values)
        return Config.from_dict(base)

    def with_overrides(self, assignments: list[str]) -> Config:
        """Apply `section.key=value` strings, each value parsed and checked against the field's type."""
        raw: dict[str, dict[str, Any]] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise UserError(f"--set expects section.key=value, got {shown(assignment)}")
            hints = _section_hints(section)
            if name not in hints:
                raise UserError(f"unknown key {shown(key)}; valid keys of {section}: {', '.join(hints)}")
            raw.setdefault(section, {})[name] = _parse_value(text.strip(), hints[name], key)
        return self.merged(raw)


_MOVED = {("model", "max_source_tokens"): "decode"}
"""Keys that moved to another section: (old section, key) -> new section. Configs and
checkpoints written before the move still load; an explicit new-place value wins."""


def _moved_keys(raw: Any) -> Any:
    """`raw` with keys at their old places moved to their new sections."""
    if not isinstance(raw, dict):
        return raw
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for (old, key), new in _MOVED.items():
        if isinstance(raw.get(old), dict) and key in raw[old]:
            value = raw[old].pop(key)
            target = raw.setdefault(new, {})
            if isinstance(target, dict):
                target.setdefault(key, value)
    return raw


INF = float("inf")
MAX_PARAMETERS = 2_000_000_000
"""The largest model a config may describe: 8 GB of fp32 weights, 32 GB with Adam's state; an
LSTM translation model this large is a typo in a size, not a plan."""


def check_ranges(section: Any, name: str) -> None:
    """Each numeric setting of config section `section` (called `name`) within the range its field
    declares: the one place ranges are checked, so --set, --config, config.yaml and command-line
    options such as --max-steps all meet the same check before anything is written. None values
    (optional fields) are not checked."""
    hints = typing.get_type_hints(type(section))
    for item in dataclasses.fields(section):
        allowed, value = item.metadata["allowed"], getattr(section, item.name)
        if value is None or isinstance(value, (str, bool)) or allowed.admits(value, section):
            continue
        kind = "an integer" if _inner(hints[item.name]) is int else "a number"
        raise UserError(f"{name}.{item.name} must be {kind} {allowed.describe(name, section)}, got {shown(value)}")


def _inner(hint: Any) -> Any:
    """The type of an Optional[...] hint's value; other hints as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def declaration(key: str) -> tuple[dataclasses.Field, Any]:
    """The field that declares config `key` (section.name) and its type hint."""
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(Config)[section]
    return next(item for item in dataclasses.fields(cls) if item.name == name), typing.get_type_hints(cls)[name]


def allowed_text(key: str) -> str:
    """The values config `key` allows, in words: its choices, its range, or the format it takes."""
    item, hint = declaration(key)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(typing.get_args(hint))
    return item.metadata["allowed"].describe(key.partition(".")[0])


def default_text(key: str) -> str:
    """The default of config `key` as config.yaml writes it (null, true, 0.001, unigram)."""
    value = declaration(key)[0].default
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def option_help(key: str, text: str) -> str:
    """Help for a command-line option that sets config `key`: `text`, then the key, its allowed
    values and its default as the key's declaration states them."""
    allowed = allowed_text(key)
    return f"{text} ({key}: {allowed + '; ' if allowed else ''}default {default_text(key)})."


MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few kilobytes; one over a megabyte is not a config (and would be slow to read)."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`): a config needs none, and aliases nested a few levels deep
    expand a few lines into billions of nodes (an "alias bomb")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's raw mapping (possibly only some sections and keys); checked when merged."""
    text = _read_text(Path(path))
    try:
        raw = yaml.load(text, Loader=_ConfigLoader) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    except ValueError as exc:  # PyYAML reads integers with int(), which refuses over 4,300 digits
        raise UserError(f"{path} holds a value that cannot be read ({cut(str(exc))})") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a config") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of sections (data, tokenizer, model, train, decode)")
    _check_keys(raw, str(path))
    for section, values in raw.items():
        if isinstance(values, dict):
            _check_keys(values, f"{path} section {cut(section)}")
    return raw


def _read_text(path: Path) -> str:
    """The UTF-8 text of a config file of at most MAX_CONFIG_BYTES."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:  # a directory, no permission, ...
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path} is over {MAX_CONFIG_BYTES >> 20} MB, too large for a config file (a few kilobytes): "
                        "is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start + 1} is not): save it as UTF-8") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and where, without PyYAML's multi-line snippet."""
    problem = cut(getattr(exc, "problem", None) or first_line(exc))
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
MAX_SHOWN = 60
"""Characters of a user's value that a message quotes: enough to recognise it, never a whole file."""


def shown(value: Any) -> str:
    """repr(value) for a message, cut to about MAX_SHOWN characters; built piecewise
    (reprlib), so a huge or self-referencing value costs no more than a short one."""
    try:
        return cut(_REPR.repr(value))
    except ValueError:  # an integer with more digits than Python will print
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else "a value too long to print"


def cut(text: str) -> str:
    """`text` cut to MAX_SHOWN characters, the cut marked with an ellipsis."""
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _section_hints(section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    if section not in hints:
        raise UserError(f"unknown config section {shown(section)}; valid: {', '.join(hints)}")
    return typing.get_type_hints(hints[section])


def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise UserError(f"config {where or 'root'} must be a mapping")
    _check_keys(raw, where.rstrip(".") or "the top level")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        names = ", ".join(cut(where + key) for key in unknown)
        raise UserError(f"unknown config key(s) {names}; valid: {', '.join(hints)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{name}.")
        else:
            values[name] = _check_type(value, hint, where + name)
    return cls(**values)


def _check_keys(raw: dict[Any, Any], where: str) -> None:
    """Keys are names: YAML reads `1:`, `null:` or `2024-01-01:` as a number, None or a date."""
    odd = [key for key in raw if not isinstance(key, str)]
    if odd:
        raise UserError(f"config keys must be text, got {', '.join(map(shown, odd[:5]))} in {where}: "
                        "write each key as a name, such as hidden_size")


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _check_type(value, _inner(hint), key)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}, got {shown(value)}")
        return value
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
            raise UserError(f"{key} must be a number, got {shown(value)}") from None
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise UserError(f"{key} must be {hint.__name__}, got {shown(value)}")
    return value


def _parse_value(text: str, hint: Any, key: str) -> Any:
    """Parse a `--set` value with YAML scalar rules, then check it against the field type."""
    try:
        value = yaml.load(text, Loader=_ConfigLoader) if text else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer too long to read
        value = text
    if _accepts_str(hint) and not isinstance(value, str) and value is not None:
        value = text
    return _check_type(value, hint, key)


def _accepts_str(hint: Any) -> bool:
    args = typing.get_args(hint)
    if hint is str:
        return True
    if typing.get_origin(hint) is Literal:
        return all(isinstance(a, str) for a in args)
    return any(_accepts_str(a) for a in args if a is not type(None))


def parse_duration(text: str) -> float:
    """Seconds in a duration such as '90s', '30m', '1.5h' or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    stripped = text.strip().lower()
    scale = units.get(stripped[-1:])
    number = stripped[:-1] if scale else stripped
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise UserError(f"cannot read duration {shown(text)}; use e.g. 90s, 30m or 2h") from None
    if not 0 < seconds < INF:  # NaN too
        raise UserError(f"duration must be positive and finite, got {shown(text)}")
    return seconds
