"""The Python API: a trained model (or an ensemble) that translates and scores text.

    from lstmmt import Translator
    translator = Translator.load("runs/en-de", beam_size=5)
    [t.text for t in translator.translate(["A man is riding a bicycle."])]

Every use of a model goes through a Translator: `lstmmt translate`, `lstmmt score`,
`lstmmt evaluate --split`, `lstmmt plot-attention`, validation during training (built
around the in-memory model) and servers. Its DecodeConfig holds every search setting; a
call may pass another, whose search-time settings differ (`Translator.decode_for`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstmmt import checkpoint as checkpoints
from lstmmt.config import Config, DecodeConfig
from lstmmt.corpus import one_line, without_surrogates
from lstmmt.decoding import Forced, for_search, force_corpus, search_corpus, step_model
from lstmmt.device import Precision, choose_precision, resolve_device
from lstmmt.errors import UserError
from lstmmt.model import Seq2Seq
from lstmmt.quantize import int8_precision
from lstmmt.release import Release, layout, open_source
from lstmmt.rundir import RunDir
from lstmmt.search import Hypothesis
from lstmmt.shortlist import Shortlist
from lstmmt.tokenizer import Tokenizer

WORD_START = "\u2581"
"""SentencePiece's mark at the start of a piece that begins a word."""

LOAD_TIME_DECODE_KEYS = ("precision", "quantize", "shortlist")
"""Decode settings `Translator.load` reads to prepare the models; every other decode key may change per call."""


@dataclass
class Candidate:
    """One hypothesis of the n-best list."""

    text: str
    score: float  # log_prob / length ** decode.length_penalty (length counts EOS)
    log_prob: float


@dataclass
class Alignment:
    """Attention of the best hypothesis, from forced decoding of it."""

    source: list[str]  # source pieces, then "</s>"
    target: list[str]  # target pieces, then "</s>"
    weights: list[list[float]]  # (target, source): each row sums to 1 over the source
    words: list[tuple[int, int]]  # hard word alignment (source word, target word), 0-based, sorted


@dataclass
class Translation:
    """The translation of one input line. A line with nothing to translate gives text "",
    score and log_prob 0.0, an empty n_best and no alignment."""

    text: str
    score: float
    log_prob: float
    n_best: list[Candidate]  # decode.n_best candidates, best first (the first is text/score)
    alignment: Alignment | None = None


@dataclass
class Score:
    """Forced-decoding score of a given translation."""

    log_prob: float  # sum of the target tokens' log-probabilities, EOS included
    score: float  # log_prob / tokens ** decode.length_penalty, comparable with search scores
    tokens: int  # target tokens, EOS included


def default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class Translator:
    """Search and forced decoding with one model or an ensemble, from text to text.

    `models` must already be prepared for search (see `load`); for validation during
    training pass the in-memory model as it is, with the training precision.
    `warn` receives one line per input line that was truncated (default: warnings.warn).
    """

    def __init__(self, models: Seq2Seq | Sequence[Seq2Seq], tokenizer: Tokenizer, decode: DecodeConfig,
                 device: torch.device, precision: str | Precision = "fp32",
                 warn: Callable[[str], None] = default_warn, shortlist: Shortlist | None = None):
        self.models = [models] if isinstance(models, Seq2Seq) else list(models)
        self.tokenizer = tokenizer
        self.decode = decode
        self.device = device
        self.precision = precision if isinstance(precision, Precision) else Precision(precision, "given")
        self.warn = warn
        self.shortlist = shortlist
        """Search narrows the output layer to it when given; `load` reads RUN/shortlist.npz for decode.shortlist."""
        self.step_model = step_model(self.models)

    @classmethod
    def load(cls, source: str | Path | RunDir | Release, checkpoint: str | Sequence[str] = "best",
             device: str = "auto", *, decode: DecodeConfig | None = None, warn: Callable[[str], None] = default_warn,
             **overrides: Any) -> Translator:
        """The model of a run directory (best, last, averaged or a checkpoint path; several
        for an ensemble of checkpoints that share this run's tokenizer) or of a release
        (`lstmmt export`; it holds one model) on `device`, searching with `decode` (None: the
        source's own decode settings, from its config.yaml) updated by `overrides` (decode keys
        such as beam_size=5, n_best=3, precision="fp32", shortlist=True, quantize="int8", sample_topk=0), each
        checked; `warn` as in the constructor. decode.shortlist reads shortlist.npz (a UserError
        naming `lstmmt shortlist` when missing); decode.quantize int8 needs the CPU."""
        _check_decode_type(decode)
        source = source if isinstance(source, (RunDir, Release)) else open_source(source)
        files = layout(source)
        tokenizer = Tokenizer.load(files.tokenizer_dir)
        decode = (Config.load(files.config).decode if decode is None else decode).updated(**overrides)
        resolved = resolve_device(device)
        if decode.quantize == "int8":
            precision = int8_precision(resolved, decode.precision)
        else:
            precision = choose_precision(decode.precision, resolved, "decode.precision", training=False)
        names = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
        if not names:
            raise UserError("no checkpoint given")
        if isinstance(source, Release) and names != ["best"]:
            raise UserError(f"{source.root} is a release: it holds one model, so there is no checkpoint to choose")
        vocabularies = tokenizer.src_vocab_size, tokenizer.tgt_vocab_size
        shortlist = Shortlist.load(files, *vocabularies) if decode.shortlist else None
        members = [source.model(tokenizer)] if isinstance(source, Release) else \
            [load_member(source, name, tokenizer) for name in names]
        models = [for_search(model, resolved, precision.name, decode.quantize) for model in members]
        return cls(models, tokenizer, decode, resolved, precision, warn, shortlist)

    def translate(self, lines: Sequence[str], alignment: bool = False, first_line: int = 1,
                  decode: DecodeConfig | None = None) -> list[Translation]:
        """Translations of `lines` (a sequence of str, TypeError otherwise), in order, one per line
        (`first_line` numbers the lines in warnings), searched with `decode` (None: this
        Translator's; see `decode_for` for what a call may change)."""
        check_lines(lines, "lines")
        decode = self.decode_for(decode)
        encoded = self._encode(lines, first_line, decode)
        keep = [i for i, ids in enumerate(encoded) if len(ids)]
        searched = [encoded[i] for i in keep]
        found = self.search(searched, decode)
        attention = self._attention(searched, [hyps[0] for hyps in found], decode) if alignment else None
        results = [Translation("", 0.0, 0.0, []) for _ in lines]
        for position, (i, hyps) in enumerate(zip(keep, found)):
            results[i] = self._translation(encoded[i], hyps, None if attention is None else attention[position])
        return results

    def score(self, sources: Sequence[str], targets: Sequence[str], first_line: int = 1,
              decode: DecodeConfig | None = None) -> list[Score]:
        """Forced-decoding scores of each target as the translation of its source (1:1; sequences of
        str), with `decode`'s length_penalty, batch_tokens and max_source_tokens (None: this Translator's)."""
        check_lines(sources, "sources")
        check_lines(targets, "targets")
        if len(sources) != len(targets):
            raise UserError(f"{len(sources)} sources but {len(targets)} targets: score needs one target per source")
        decode = self.decode_for(decode)
        src = self._encode(sources, first_line, decode)
        tgt = [np.asarray(ids, dtype=np.int32) for ids in self.tokenizer.encode_tgt([clean_line(t) for t in targets])]
        forced = self._force(src, tgt, decode)
        penalty = decode.length_penalty
        return [Score(float(f.log_probs.sum()), float(f.log_probs.sum()) / len(f.log_probs) ** penalty,
                      len(f.log_probs)) for f in forced]

    def search(self, sentences: Sequence[np.ndarray], decode: DecodeConfig | None = None
               ) -> list[list[Hypothesis]]:
        """The decode.n_best hypotheses of each sentence (source ids without EOS), in input order,
        with `decode` (None: this Translator's); over the shortlist when there is one (forced
        decoding, `score`, always uses the full vocabulary)."""
        decode = self.decode_for(decode)
        for model in self.models:
            model.eval()
        return search_corpus(self.step_model, sentences, decode, self.device, self.precision.name, self.shortlist)

    def translate_encoded(self, sentences: Sequence[np.ndarray]) -> list[str]:
        """Detokenized best translations of encoded sentences (what validation scores with BLEU)."""
        best = [hyps[0].tokens for hyps in self.search(sentences)]
        return [one_line(text) for text in self.tokenizer.decode_tgt(best)]

    def decode_for(self, decode: DecodeConfig | None) -> DecodeConfig:
        """The settings of one call: this Translator's when None, else `decode`, checked. The
        settings `load` read (LOAD_TIME_DECODE_KEYS) must equal this Translator's: a call cannot
        change the models' precision, int8 copies or shortlist (a UserError says to load another)."""
        if decode is None or decode is self.decode:
            return self.decode
        _check_decode_type(decode)
        decode.check()
        for key in LOAD_TIME_DECODE_KEYS:
            if getattr(decode, key) != getattr(self.decode, key):
                raise UserError(f"decode.{key} is read when the model loads ({getattr(self.decode, key)!r} here), so "
                                f"a call cannot change it: load a Translator with {key}={getattr(decode, key)!r}")
        return decode

    # -- helpers -------------------------------------------------------------------------

    def _encode(self, lines: Sequence[str], first_line: int, decode: DecodeConfig) -> list[np.ndarray]:
        """Source ids of each line (clean_line applied), truncated to decode.max_source_tokens with a warning."""
        limit = decode.max_source_tokens
        encoded = self.tokenizer.encode_src([clean_line(line) for line in lines])
        for offset, ids in enumerate(encoded):
            if len(ids) > limit:
                self.warn(f"line {first_line + offset}: {len(ids)} tokens, truncated to {limit}")
        return [np.asarray(ids[:limit], dtype=np.int32) for ids in encoded]

    def _force(self, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], decode: DecodeConfig,
               attention: bool = False) -> list[Forced]:
        for model in self.models:
            model.eval()
        return force_corpus(self.step_model, sources, targets, decode, self.device, self.precision.name,
                            self.models if attention else ())

    def _attention(self, sources: list[np.ndarray], best: list[Hypothesis], decode: DecodeConfig) -> list[Alignment]:
        """Alignments of each source with its best hypothesis, by forced decoding of it."""
        forced = self._force(sources, [np.asarray(h.tokens, dtype=np.int32) for h in best], decode, attention=True)
        return [self._alignment(src, hyp.tokens, f.attention) for src, hyp, f in zip(sources, best, forced)]

    def _alignment(self, src: np.ndarray, tgt: list[int], weights: Any) -> Alignment:
        source, target = self.tokenizer.src_pieces(src.tolist()), self.tokenizer.tgt_pieces(tgt)
        # float64 before rounding: a float32 rounded to 6 decimals still prints 17 digits in JSON
        return Alignment(source + ["</s>"], target + ["</s>"], np.round(np.asarray(weights, np.float64), 6).tolist(),
                         word_alignment(source, target, weights))

    def _translation(self, src: np.ndarray, hyps: list[Hypothesis], alignment: Alignment | None) -> Translation:
        texts = [one_line(text) for text in self.tokenizer.decode_tgt([h.tokens for h in hyps])]
        n_best = [Candidate(text, h.score, h.log_prob) for text, h in zip(texts, hyps)]
        return Translation(texts[0], hyps[0].score, hyps[0].log_prob, n_best, alignment)


def _check_decode_type(decode: Any) -> None:
    if decode is not None and not isinstance(decode, DecodeConfig):
        raise TypeError(f"decode must be a DecodeConfig or None, got {type(decode).__name__}: pass single "
                        "settings as keywords (Translator.load(..., beam_size=5)) or use DecodeConfig().updated(...)")


def check_lines(lines: Sequence[str], name: str) -> None:
    """TypeError unless `lines` is a sequence of str: a str itself is a sequence of characters,
    which would be translated one by one, and other items fail deep inside the tokenizer."""
    if isinstance(lines, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str (one str per line), got {type(lines).__name__}: "
                        "pass [text] for one text")
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"{name} must be a sequence of str, but {name}[{index}] has type {type(line).__name__}")


def clean_line(text: str) -> str:
    """A line as the tokenizer gets it, cleaned as corpus text is: one line, lone surrogates as
    U+FFFD. SentencePiece normalises the rest itself (NFKC) and encodes a NUL as unknown."""
    return one_line(without_surrogates(text))


def load_member(run: RunDir, name: str, tokenizer: Tokenizer) -> Seq2Seq:
    """The model of one checkpoint, refused when it was trained with another tokenizer."""
    path = checkpoints.resolve(run, name)
    _check_same_tokenizer(run, path)
    model, _, _ = checkpoints.load_model(path, tokenizer)
    return model


def _check_same_tokenizer(run: RunDir, path: Path) -> None:
    """A checkpoint inside another run directory (RUN2/checkpoints/x.pt) must come with the
    same SentencePiece files as this run: equal vocabulary sizes alone do not make two
    tokenizers the same, and a model fed another tokenizer's ids translates garbage."""
    other = RunDir(Path(path).resolve().parent.parent)
    if other.root == run.root.resolve() or not other.tokenizer_dir.is_dir():
        return
    if other.tokenizer_digest() != run.tokenizer_digest():
        raise UserError(f"{path} belongs to {other.root}, whose tokenizer differs from {run.root}'s: "
                        "an ensemble needs checkpoints of runs that share one tokenizer")


def word_alignment(source: list[str], target: list[str], weights: Any) -> list[tuple[int, int]]:
    """Hard word alignment: each target piece is aligned to the source piece it attends to
    most (EOS left out on both sides); pieces map to words by SentencePiece's word mark."""
    if not source or not target:
        return []
    src_words, tgt_words = _word_index(source), _word_index(target)
    best = np.asarray(weights)[: len(target), : len(source)].argmax(axis=1)
    return sorted({(src_words[int(s)], tgt_words[t]) for t, s in enumerate(best)})


def _word_index(pieces: list[str]) -> list[int]:
    """The 0-based word of each piece: a new word starts at each piece with the word mark."""
    words, current = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or current < 0:
            current += 1
        words.append(current)
    return words


def as_dict(translation: Translation) -> dict[str, Any]:
    """A translation as plain JSON-ready data (the JSONL format of `lstmmt translate`). The lists
    are shared, not copied as dataclasses.asdict would: a long alignment's copy took seconds."""
    record = _fields(translation) | {"n_best": [_fields(candidate) for candidate in translation.n_best]}
    if translation.alignment is None:
        del record["alignment"]
    else:
        words = " ".join(f"{s}-{t}" for s, t in translation.alignment.words)
        record["alignment"] = _fields(translation.alignment) | {"words": words}
    return record


def _fields(instance: Any) -> dict[str, Any]:
    return {field.name: getattr(instance, field.name) for field in dataclasses.fields(instance)}
