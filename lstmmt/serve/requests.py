"""What `lstmmt serve` accepts, as pure functions: request fields in, sentences, decode settings and options out.

Nothing here reads a socket or knows Starlette. Each parser takes literal values (a request's
fields as a dict, the server's DecodeConfig, Model and Limits) and returns what the worker
needs, or raises a ServeError holding the status and the one-line message the client gets;
the answer builders turn translations into the JSON of each API. lstmmt/serve/app.py reads the
bodies and hands them here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lstmmt.config import DecodeConfig
from lstmmt.errors import UserError
from lstmmt.translator import Translation, as_dict

LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "fi": "Finnish", "fr": "French", "hu": "Hungarian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}
"""Names for GET /languages; other codes are named by themselves."""

REQUEST_DECODE_KEYS = ("beam_size", "n_best", "length_penalty", "max_len_a", "max_len_b", "sample_topk", "temperature",
                       "seed")
"""Decode settings a request of the native API may choose; the others belong to the server."""

MAX_ALIGNMENT_WEIGHTS = 1_000_000
"""The most attention weights one native answer holds (about 9 MB of JSON): a request whose
alignments hold more gets a 400 instead of an answer that would take seconds to write."""

LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
"""Where LibreTranslate text is split into sentences (each line is translated on its own)."""


@dataclass
class Limits:
    """What one server accepts and how it batches (the options of `lstmmt serve`)."""

    max_body: int = 1 << 20  # bytes of one request body
    max_sentences: int = 100  # sentences (lines) of one request
    queue_size: int = 64  # requests waiting for the worker
    batch_sentences: int = 64  # sentences searched together, across requests
    max_beam: int = 16  # the largest beam_size a request may ask for, and the most samples (n_best) when sampling
    batching: bool = True  # False: one request per search
    timeout: float = 30.0  # seconds a client has to send a request's headers, and again its body
    max_connections: int = 512  # open connections served at once; requests beyond them get 503

    def check(self) -> None:
        """Each limit's range, as a UserError naming its option."""
        for name in ("max_body", "max_sentences", "queue_size", "batch_sentences", "max_beam", "max_connections"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise UserError(f"--timeout must be a number of seconds > 0, got {self.timeout}")


class ServeError(Exception):
    """An answer other than 200: status, one message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Model:
    """What the server tells about its model."""

    source: str
    target: str
    checkpoints: list[str]

    def pair_error(self, source: Any, target: Any) -> ServeError:
        return ServeError(400, f"This server translates {self.source} to {self.target} only (source {self.source} "
                          f"or auto, target {self.target}); got source {shown(source)}, target {shown(target)}")


def media_type(headers: Any) -> str:
    """The content type of a request's headers (a mapping), without parameters, lower case; "" when none."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> dict[str, Any]:
    """The body's JSON object; anything else is a 400: malformed JSON or UTF-8, NaN and Infinity (which
    Python reads but JSON has not), integers longer than int() converts, nesting deeper than the parser goes."""
    try:
        data = json.loads(body, parse_constant=_not_json)
    except RecursionError:
        raise ServeError(400, "Invalid request: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and int()'s digit limit are ValueErrors
        raise ServeError(400, f"Invalid request: malformed JSON ({str(exc).split(';')[0]})") from None
    if not isinstance(data, dict):
        raise ServeError(400, "Invalid request: the JSON body must be an object")
    return data


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


# -- LibreTranslate: POST /translate, GET /languages -----------------------------------------


@dataclass
class LibreRequest:
    """A LibreTranslate request, checked."""

    texts: list[list[str]]  # the lines of each text of q, each translated on its own
    single: bool  # q was one string: the answer holds one string, not a list
    auto: bool  # source was "auto": the answer names the detected language
    alternatives: int  # other candidates asked for per text
    decode: DecodeConfig  # the server's, with n_best for the alternatives

    @property
    def lines(self) -> list[str]:
        return [line for text_lines in self.texts for line in text_lines]


def libre_request(fields: dict[str, Any], model: Model, decode: DecodeConfig, limits: Limits) -> LibreRequest:
    """LibreTranslate's fields (q, source, target, format, alternatives; others ignored) checked
    against the model and the limits; `decode` is the server's."""
    q = fields.get("q")
    if not q:
        raise ServeError(400, "Invalid request: missing q parameter")
    texts = [q] if isinstance(q, str) else q
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ServeError(400, "Invalid request: q must be a string or a list of strings")
    for name in ("source", "target"):
        if not fields.get(name):
            raise ServeError(400, f"Invalid request: missing {name} parameter")
    source, target = fields["source"], fields["target"]
    if source not in (model.source, "auto") or target != model.target:
        raise model.pair_error(source, target)
    text_format = fields.get("format", "text") or "text"
    if text_format != "text":
        raise ServeError(400, f"Invalid request: format {shown(text_format)} is not supported; this server "
                         "translates plain text (format text)")
    alternatives = _non_negative_int(fields.get("alternatives", 0), "alternatives")
    n_best = min(alternatives + 1, decode.beam_size)
    if n_best != decode.n_best:
        decode = decode.updated(n_best=n_best)
    _check_count(len(texts), limits)  # before splitting: each text is at least one line
    split = [LINE_BREAK.split(text) for text in texts]
    _check_count(sum(map(len, split)), limits)
    return LibreRequest(split, isinstance(q, str), source == "auto", alternatives, decode)


def libre_answer(request: LibreRequest, translations: Sequence[Translation], model: Model) -> dict[str, Any]:
    """The answer to `request`, given the translations of its lines in order: each text's lines joined
    again, and its alternatives (the k-th candidates of its lines, joined) when asked for."""
    results, offset = [], 0
    for text_lines in request.texts:
        results.append(translations[offset:offset + len(text_lines)])
        offset += len(text_lines)
    joined = ["\n".join(t.text for t in result) for result in results]
    answer: dict[str, Any] = {"translatedText": joined[0] if request.single else joined}
    if request.auto:
        detected = {"confidence": 100.0, "language": model.source}
        answer["detectedLanguage"] = detected if request.single else [detected] * len(request.texts)
    if request.alternatives:
        others = [[_alternative(result, k) for k in range(1, request.decode.n_best)] for result in results]
        answer["alternatives"] = others[0] if request.single else others
    return answer


def languages(model: Model) -> list[dict[str, Any]]:
    """GET /languages: the model's one pair."""
    return [{"code": model.source, "name": LANGUAGE_NAMES.get(model.source, model.source), "targets": [model.target]},
            {"code": model.target, "name": LANGUAGE_NAMES.get(model.target, model.target), "targets": []}]


def _alternative(result: Sequence[Translation], k: int) -> str:
    """The k-th candidate of each line, joined (a line with fewer candidates gives its best)."""
    return "\n".join(t.n_best[k].text if k < len(t.n_best) else t.text for t in result)


# -- the native API: POST /v1/translate ------------------------------------------------------


@dataclass
class NativeRequest:
    """A native request, checked."""

    sentences: list[str]
    alignment: bool
    decode: DecodeConfig  # the server's, with the request's REQUEST_DECODE_KEYS


def native_request(fields: dict[str, Any], decode: DecodeConfig, limits: Limits) -> NativeRequest:
    """The fields of a JSON body of POST /v1/translate, checked; `decode` is the server's."""
    unknown = sorted(set(fields) - {"sentences", "alignment", *REQUEST_DECODE_KEYS})
    if unknown:
        named = ", ".join(name[:60] + "..." * (len(name) > 60) for name in unknown[:3])
        named += f", {len(unknown) - 3} more" if unknown[3:] else ""
        raise ServeError(400, f"Invalid request: unknown field(s) {named}; valid: sentences, alignment, "
                         f"{', '.join(REQUEST_DECODE_KEYS)}")
    sentences = fields.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise ServeError(400, "Invalid request: sentences must be a list of strings")
    alignment = fields.get("alignment", False)
    if not isinstance(alignment, bool):
        raise ServeError(400, f"Invalid request: alignment must be true or false, got {shown(alignment)}")
    _check_count(len(sentences), limits)
    return NativeRequest(sentences, alignment, request_decode(fields, decode, limits))


def request_decode(fields: dict[str, Any], server: DecodeConfig, limits: Limits) -> DecodeConfig:
    """The server's decode settings with the request's REQUEST_DECODE_KEYS, each checked: beam_size
    (or, when sampling, n_best: the samples per sentence) up to limits.max_beam (or the server's own
    value, if larger); max_len_a and max_len_b may lower the server's output length limit, not raise it."""
    chosen = {key: fields[key] for key in REQUEST_DECODE_KEYS if key in fields}
    try:
        decode = server.updated(**chosen)
    except UserError as exc:
        raise ServeError(400, f"Invalid request: {exc}") from None
    width = "beam_size" if decode.sample_topk is None else "n_best"
    if getattr(decode, width) > max(limits.max_beam, getattr(server, width)):
        raise ServeError(400, f"Invalid request: {width} {getattr(decode, width)} is above this server's limit of "
                         f"{limits.max_beam}")
    for key in ("max_len_a", "max_len_b"):
        if getattr(decode, key) > getattr(server, key):
            raise ServeError(400, f"Invalid request: {key} {getattr(decode, key)} is above this server's "
                             f"{getattr(server, key)} (lstmmt serve --set decode.{key}=...)")
    return decode


def native_answer(translations: Sequence[Translation]) -> dict[str, Any]:
    """One object per sentence, as `lstmmt translate --format jsonl` writes it; a 400 when the
    alignments hold more than MAX_ALIGNMENT_WEIGHTS weights."""
    weights = sum(len(t.alignment.weights) * len(t.alignment.source) for t in translations if t.alignment)
    if weights > MAX_ALIGNMENT_WEIGHTS:
        raise ServeError(400, f"Invalid request: the alignments hold {weights:,} attention weights, more than this "
                         f"server answers ({MAX_ALIGNMENT_WEIGHTS:,}); ask for fewer or shorter sentences")
    return {"translations": [as_dict(t) for t in translations]}


# -- helpers ---------------------------------------------------------------------------------


def _non_negative_int(value: Any, name: str) -> int:
    """A whole number >= 0 from JSON or form text (ASCII digits only); 400 otherwise (an infinite float included)."""
    error = ServeError(400, f"Invalid request: {name} must be a whole number >= 0, got {shown(value)}")
    if isinstance(value, bool) or isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        raise error
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise error from None
    if number < 0 or number != value and not isinstance(value, str):
        raise error
    return number


def shown(value: Any, most: int = 60) -> str:
    """A request value for an error message, cut short: a message never echoes a whole request."""
    try:
        shown = repr(value)
    except ValueError:  # an int too long for repr
        shown = f"a {type(value).__name__}"
    return shown if len(shown) <= most else shown[:most] + "..."


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_sentences:
        raise ServeError(400, f"Invalid request: {count} sentences (lines) exceed this server's limit of "
                         f"{limits.max_sentences} per request")
