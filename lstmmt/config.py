"""Typed configuration: one dataclass per section, YAML load/save and `--set` overrides.

The config is built once (defaults < YAML file < `--set key=value`), validated as a
whole, and passed down; nothing below reads options from anywhere else. Unknown keys
and ill-typed values are errors that list what is allowed, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from lstmmt.errors import UserError


@dataclass
class DataConfig:
    """What preprocess reads and how it cleans it."""

    src_lang: str = "src"
    tgt_lang: str = "tgt"
    max_tokens: int = 200
    """Pairs with a side longer than this many subword tokens are dropped from training."""
    max_ratio: float = 3.0
    """Pairs whose token-length ratio (longer/shorter side) exceeds this are dropped from training."""


@dataclass
class TokenizerConfig:
    """SentencePiece settings."""

    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    joint: bool = True
    """One shared model for both languages (needed for tied source/target embeddings)."""
    character_coverage: float = 1.0
    input_sentence_size: int = 1_000_000
    """SentencePiece samples at most this many sentences per model for training."""


@dataclass
class ModelConfig:
    """The attentional encoder-decoder; see lstmmt/model.py."""

    embed_size: int = 256
    hidden_size: int = 512
    """Decoder hidden size; each encoder direction has hidden_size // 2."""
    encoder_layers: int = 2
    decoder_layers: int = 1
    dropout: float = 0.3
    """Dropout on embeddings, between LSTM layers and before the output layer."""
    attention: Literal["luong", "dot", "bahdanau"] = "luong"
    input_feeding: bool = False
    """Feed the previous attentional state into the decoder LSTM (slower: the decoder runs step by step)."""
    tie_embeddings: bool = True
    """Share target embeddings with the output layer (and source embeddings too when the tokenizer is joint)."""
    init: Literal["uniform", "pytorch"] = "uniform"
    """Initial weights: every parameter from U(-init_range, init_range), as OpenNMT-py does (learns much faster early on), or PyTorch's per-layer defaults (embeddings N(0, 1/embed_size))."""
    init_range: float = 0.1
    """r of `init: uniform`."""


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpointing."""

    seed: int = 1
    batch_tokens: Optional[int] = None
    """Token budget per batch (padded tokens: longest side + 1, times sentences); null: chosen by the device when training starts (4,096 on a CPU, 16,384 on a GPU) and recorded in config.yaml."""
    window_sentences: int = 1_000_000
    """Sentences read, sorted by length and batched together; memory grows with this, not the corpus."""
    lr: float = 1e-3
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "inverse_sqrt", "plateau", "budget"] = "plateau"
    """After warm-up: keep lr, decay with 1/sqrt(step), halve on a validation BLEU plateau, or (budget) decay linearly to lr_min at the end of the budget (max_time or max_steps, whichever is nearer)."""
    decay_share: float = 1.0
    """With lr_schedule budget: the final share of the budget over which the rate decays to lr_min; before it the rate holds at lr (1.0: decay from the start; 0.3: warm-up, stable, then decay over the last 30%)."""
    lr_decay_factor: float = 0.5
    lr_min: float = 1e-5
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    max_steps: int = 100_000
    max_epochs: int = 1000
    max_time: Optional[str] = None
    """Wall-clock budget such as 30m, 2h or 90s; training validates and stops when it is spent."""
    valid_every: int = 1000
    valid_every_time: Optional[str] = None
    """Also validate when this much training time (e.g. 5m) has passed since the last validation, so a slow machine still validates often enough."""
    patience: int = 10
    """Stop after this many validations without a better validation BLEU (0 = never)."""
    keep_checkpoints: int = 5
    """How many step-N.pt files to keep besides last.pt and best.pt."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where the device runs it natively (CUDA GPUs with bf16 units, CPUs with AVX512-BF16 or AMX), else fp32; bf16 runs the model under autocast."""
    log_every: int = 100
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""


@dataclass
class DecodeConfig:
    """Search settings for validation, translate, score and the Translator API."""

    beam_size: int = 5
    """1 is greedy search."""
    n_best: int = 1
    """Hypotheses returned per sentence, best first (1 to beam_size)."""
    length_penalty: float = 1.0
    """Hypothesis score = log-probability / length ** length_penalty."""
    max_len_a: float = 1.5
    max_len_b: int = 10
    """Outputs stop at max_len_a * source_length + max_len_b tokens."""
    batch_tokens: Optional[int] = None
    """Source-token budget per translation batch (times the beam size inside search); null: chosen by the device (8,000 on a CPU, 32,768 on a GPU)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where the device runs it natively, else fp32. bf16 searches in bf16 (weights cast once on CPU, autocast on GPUs); see docs/performance.md for its BLEU cost."""
    max_source_tokens: int = 250
    """Longer inputs are truncated at translation time, with a warning."""
    shortlist: bool = False
    """Search over a vocabulary shortlist (RUN/shortlist.npz, written by `lstmmt shortlist RUN`): the output layer covers only the target pieces the batch's source pieces allow, which is faster on CPUs and may change translations. Read by Translator.load."""
    quantize: Literal["none", "int8"] = "none"
    """int8: dynamic int8 quantisation of the LSTMs and Linear layers for CPU search (fp32 activations; not on GPUs). Read by Translator.load."""
    workers: Optional[int] = None
    """Batches searched at once on a CPU, each by its own thread with an equal share of torch's threads; null: one per torch thread (never more than there are batches). Translations do not change. GPUs search one batch at a time."""

    def check(self) -> None:
        """Each setting's allowed range, named with its key (UserError otherwise). The length
        settings are bounded so search's arithmetic stays finite: length ** length_penalty for
        any output length, and max_len_a * source length + max_len_b as a token count."""
        checks = [
            (self.beam_size >= 1, "decode.beam_size must be an integer >= 1 (1 is greedy search)", self.beam_size),
            (1 <= self.n_best <= self.beam_size, f"decode.n_best must be between 1 and decode.beam_size ({self.beam_size})", self.n_best),
            (-10 <= self.length_penalty <= 10, "decode.length_penalty must be a number in [-10, 10]", self.length_penalty),
            (0 <= self.max_len_a <= 100, "decode.max_len_a must be a number in [0, 100]", self.max_len_a),
            (0 <= self.max_len_b <= 10_000, "decode.max_len_b must be an integer in [0, 10000]", self.max_len_b),
            (self.batch_tokens is None or self.batch_tokens >= 1, "decode.batch_tokens must be an integer >= 1 (or null: the device's default)", self.batch_tokens),
            (self.max_source_tokens >= 1, "decode.max_source_tokens must be an integer >= 1", self.max_source_tokens),
            (self.workers is None or self.workers >= 1, "decode.workers must be an integer >= 1 (or null: one per CPU thread)", self.workers),
        ]
        for ok, message, value in checks:
            if not ok:  # NaN fails every comparison
                raise UserError(f"{message}, got {shown(value)}")

    def updated(self, **values: Any) -> "DecodeConfig":
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
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> "Config":
        """Range and cross-field checks, run before any data is touched or any file written."""
        for section in (self.data, self.tokenizer, self.model, self.train):
            _check_ranges(section)
        if self.model.hidden_size % 2:
            raise UserError("model.hidden_size must be even (each encoder direction gets half), "
                            f"got {shown(self.model.hidden_size)}")
        self._check_model_size()
        self.decode.check()
        for duration in (self.train.max_time, self.train.valid_every_time):
            if duration is not None:
                parse_duration(duration)
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
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        return _build(cls, _moved_keys(raw), "").validate()

    def save(self, path: Path) -> None:
        from lstmmt.rundir import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(read_yaml(path))

    def merged(self, raw: dict[str, Any]) -> "Config":
        """This config with the (possibly partial) sections in `raw` laid over it."""
        base = self.to_dict()
        for section, values in _moved_keys(raw).items():
            if section not in base:
                raise UserError(f"unknown config section {shown(section)}; valid: {', '.join(base)}")
            if not isinstance(values, dict):
                raise UserError(f"config section {shown(section)} must be a mapping")
            base[section].update(values)
        return Config.from_dict(base)

    def with_overrides(self, assignments: list[str]) -> "Config":
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
RANGES: dict[str, tuple[float, float, str]] = {
    # key: (low, high, how the bounds read); None values (optional fields) are not checked
    "data.max_tokens": (1, INF, ">= 1"),
    "data.max_ratio": (1, INF, ">= 1"),
    "tokenizer.vocab_size": (8, INF, ">= 8"),
    "tokenizer.character_coverage": (0, 1, "in (0, 1]"),
    "tokenizer.input_sentence_size": (1, INF, ">= 1"),
    "model.embed_size": (1, INF, ">= 1"),
    "model.hidden_size": (2, INF, ">= 2 and even"),
    "model.encoder_layers": (1, INF, ">= 1"),
    "model.decoder_layers": (1, INF, ">= 1"),
    "model.dropout": (0, 1, "in [0, 1)"),
    "model.init_range": (0, INF, "> 0"),
    "train.seed": (0, 2**32 - 1, "in [0, 4294967295]"),
    "train.batch_tokens": (1, INF, ">= 1 (or null: chosen by the device)"),
    "train.window_sentences": (1, INF, ">= 1"),
    "train.lr": (0, INF, "> 0"),
    "train.warmup_steps": (0, INF, ">= 0"),
    "train.decay_share": (0, 1, "in (0, 1]"),
    "train.lr_decay_factor": (0, 1, "in (0, 1]"),
    "train.lr_min": (0, INF, ">= 0"),
    "train.clip_norm": (0, INF, "> 0"),
    "train.label_smoothing": (0, 1, "in [0, 1)"),
    "train.max_steps": (1, INF, ">= 1"),
    "train.max_epochs": (1, INF, ">= 1"),
    "train.valid_every": (1, INF, ">= 1"),
    "train.patience": (0, INF, ">= 0 (0 = never stop early)"),
    "train.keep_checkpoints": (0, INF, ">= 0"),
    "train.log_every": (1, INF, ">= 1"),
    "train.threads": (0, INF, ">= 0 (0 = torch's default)"),
}
"""The allowed range of every numeric field of the data, tokenizer, model and train sections:
the one place they are checked, so --set, --config, config.yaml and command-line options such
as --max-steps all meet the same check before anything is written."""
_OPEN_LOW = {"tokenizer.character_coverage", "model.init_range", "train.lr", "train.decay_share", "train.lr_decay_factor", "train.clip_norm"}
_OPEN_HIGH = {"model.dropout", "train.label_smoothing"}


def _check_ranges(section: Any) -> None:
    name = {DataConfig: "data", TokenizerConfig: "tokenizer", ModelConfig: "model", TrainConfig: "train"}[type(section)]
    for item in dataclasses.fields(section):
        key, value = f"{name}.{item.name}", getattr(section, item.name)
        if value is None or isinstance(value, (str, bool)):
            continue
        if key not in RANGES:
            raise AssertionError(f"numeric config field {key} has no range in config.RANGES")
        low, high, allowed = RANGES[key]
        too_low = value <= low if key in _OPEN_LOW else value < low
        too_high = value >= high if key in _OPEN_HIGH else value > high
        if too_low or too_high or (isinstance(value, float) and not math.isfinite(value)):  # NaN compares false
            raise UserError(f"{key} must be {allowed}, got {shown(value)}")


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
    problem = cut(getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0])
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
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key)
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
    scale = units.get(stripped[-1:], None)
    number = stripped[:-1] if scale else stripped
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise UserError(f"cannot read duration {shown(text)}; use e.g. 90s, 30m or 2h") from None
    if not 0 < seconds < INF:  # NaN too
        raise UserError(f"duration must be positive and finite, got {shown(text)}")
    return seconds
