"""The request parsers and answer builders of `lstmmt serve` with literal inputs: no model, no server.

tests/test_serve.py and tests/test_serve_requests.py check the same answers through a live server.
"""

from dataclasses import replace

import pytest

from lstmmt.config import DecodeConfig
from lstmmt.errors import UserError
from lstmmt.serve.requests import (
    Limits,
    Model,
    ServeError,
    languages,
    libre_answer,
    libre_request,
    media_type,
    native_answer,
    native_request,
    parse_json,
)
from lstmmt.translator import Candidate, Translation

MODEL = Model("en", "de", ["best"])
SERVER = DecodeConfig(beam_size=5, n_best=1, max_len_a=1.5, max_len_b=10)
LIMITS = Limits(max_sentences=4, max_beam=16)


def refused(parse, *args) -> ServeError:
    with pytest.raises(ServeError) as error:
        parse(*args)
    return error.value


def translation(text: str, *others: str) -> Translation:
    candidates = [Candidate(t, -1.0 - i, -2.0 - i) for i, t in enumerate((text, *others))]
    return Translation(text, -1.0, -2.0, candidates)


@pytest.mark.parametrize("body,message", [
    (b'["seven"]', "Invalid request: the JSON body must be an object"),
    (b'{"q": NaN}', "Invalid request: malformed JSON (NaN is not a JSON number)"),
    (b'{"q": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "Invalid request: malformed JSON (nested too deeply)"),
    (b'{"q": "\xff"}', "Invalid request: malformed JSON ("),
    (b'{"q": ', "Invalid request: malformed JSON (Expecting value"),
])
def test_parse_json_refuses_what_is_not_a_json_object(body, message):
    error = refused(parse_json, body)
    assert error.status == 400 and error.message.startswith(message)


def test_parse_json_and_media_type():
    assert parse_json(b'{"q": "seven", "n": 1}') == {"q": "seven", "n": 1}
    assert media_type({"content-type": "Application/JSON; charset=utf-8"}) == "application/json"
    assert media_type({}) == ""


def test_libre_request_splits_each_text_into_lines_and_asks_for_the_alternatives():
    asked = libre_request({"q": "one\r\ntwo\u2028three", "source": "auto", "target": "de", "alternatives": "2",
                           "api_key": "ignored"}, MODEL, SERVER, LIMITS)
    assert (asked.texts, asked.single, asked.auto, asked.alternatives) == ([["one", "two", "three"]], True, True, 2)
    assert asked.lines == ["one", "two", "three"]
    assert asked.decode == replace(SERVER, n_best=3)
    listed = libre_request({"q": ["a", "b\nc"], "source": "en", "target": "de"}, MODEL, SERVER, LIMITS)
    assert (listed.texts, listed.single, listed.auto, listed.decode) == ([["a"], ["b", "c"]], False, False, SERVER)
    capped = libre_request({"q": "a", "source": "en", "target": "de", "alternatives": 10}, MODEL, SERVER, LIMITS)
    assert capped.decode.n_best == SERVER.beam_size


@pytest.mark.parametrize("fields,message", [
    ({"source": "en", "target": "de"}, "Invalid request: missing q parameter"),
    ({"q": "", "source": "en", "target": "de"}, "Invalid request: missing q parameter"),
    ({"q": ["a", 1], "source": "en", "target": "de"}, "Invalid request: q must be a string or a list of strings"),
    ({"q": {"a": 1}, "source": "en", "target": "de"}, "Invalid request: q must be a string or a list of strings"),
    ({"q": "a", "target": "de"}, "Invalid request: missing source parameter"),
    ({"q": "a", "source": "en", "target": ""}, "Invalid request: missing target parameter"),
    ({"q": "a", "source": "de", "target": "en"},
     "This server translates en to de only (source en or auto, target de); got source 'de', target 'en'"),
    ({"q": "a", "source": "en", "target": "de", "format": "html"},
     "Invalid request: format 'html' is not supported; this server translates plain text (format text)"),
    ({"q": "a", "source": "en", "target": "de", "alternatives": -1},
     "Invalid request: alternatives must be a whole number >= 0, got -1"),
    ({"q": "a", "source": "en", "target": "de", "alternatives": 1.5},
     "Invalid request: alternatives must be a whole number >= 0, got 1.5"),
    ({"q": "a", "source": "en", "target": "de", "alternatives": True},
     "Invalid request: alternatives must be a whole number >= 0, got True"),
    ({"q": "a", "source": "en", "target": "de", "alternatives": float("inf")},
     "Invalid request: alternatives must be a whole number >= 0, got inf"),
    ({"q": ["a\nb", "c\nd\ne"], "source": "en", "target": "de"},
     "Invalid request: 5 sentences (lines) exceed this server's limit of 4 per request"),
    ({"q": "x" * 100, "source": "en", "target": "it"},
     "This server translates en to de only (source en or auto, target de); got source 'en', target 'it'"),
])
def test_libre_request_refuses_with_400(fields, message):
    error = refused(libre_request, fields, MODEL, SERVER, LIMITS)
    assert (error.status, error.message) == (400, message)


def test_libre_answer_joins_each_texts_lines_and_gives_alternatives():
    one = libre_request({"q": "a\nb", "source": "auto", "target": "de", "alternatives": 2}, MODEL, SERVER, LIMITS)
    assert libre_answer(one, [translation("A", "A2", "A3"), translation("B", "B2")], MODEL) == {
        "translatedText": "A\nB", "detectedLanguage": {"confidence": 100.0, "language": "en"},
        "alternatives": ["A2\nB2", "A3\nB"]}  # a line with fewer candidates gives its best
    many = libre_request({"q": ["a", "b\nc"], "source": "en", "target": "de"}, MODEL, SERVER, LIMITS)
    assert libre_answer(many, [translation("A"), translation("B"), translation("C")], MODEL) == {
        "translatedText": ["A", "B\nC"]}


def test_languages_names_known_codes_and_shows_others_as_they_are():
    assert languages(Model("en", "xx", ["best"])) == [{"code": "en", "name": "English", "targets": ["xx"]},
                                                      {"code": "xx", "name": "xx", "targets": []}]


def test_native_request_lays_the_request_decode_settings_over_the_servers():
    asked = native_request({"sentences": ["a", ""], "alignment": True, "beam_size": 3, "n_best": 2,
                            "length_penalty": 0.5, "max_len_a": 1.0, "max_len_b": 10}, SERVER, LIMITS)
    assert (asked.sentences, asked.alignment) == (["a", ""], True)
    assert asked.decode == replace(SERVER, beam_size=3, n_best=2, length_penalty=0.5, max_len_a=1.0)
    assert native_request({"sentences": []}, SERVER, LIMITS).decode == SERVER
    wide = replace(SERVER, beam_size=20)  # a server beam above --max-beam stays allowed
    assert native_request({"sentences": ["a"], "beam_size": 20}, wide, LIMITS).decode.beam_size == 20


@pytest.mark.parametrize("fields,message", [
    ({"sentences": ["a"], "precision": "bf16", "batch_tokens": 1},
     ("Invalid request: unknown field(s) batch_tokens, precision; valid: sentences, alignment, beam_size, n_best, "
      "length_penalty, max_len_a, max_len_b, sample_topk, temperature, seed")),
    ({}, "Invalid request: sentences must be a list of strings"),
    ({"sentences": "a"}, "Invalid request: sentences must be a list of strings"),
    ({"sentences": ["a", None]}, "Invalid request: sentences must be a list of strings"),
    ({"sentences": ["a"], "alignment": 1}, "Invalid request: alignment must be true or false, got 1"),
    ({"sentences": ["a"] * 5}, "Invalid request: 5 sentences (lines) exceed this server's limit of 4 per request"),
    ({"sentences": ["a"], "beam_size": 17}, "Invalid request: beam_size 17 is above this server's limit of 16"),
    ({"sentences": ["a"], "max_len_a": 2.0},
     "Invalid request: max_len_a 2.0 is above this server's 1.5 (lstmmt serve --set decode.max_len_a=...)"),
    ({"sentences": ["a"], "max_len_b": 11},
     "Invalid request: max_len_b 11 is above this server's 10 (lstmmt serve --set decode.max_len_b=...)"),
])
def test_native_request_refuses_with_400(fields, message):
    error = refused(native_request, fields, SERVER, LIMITS)
    assert (error.status, error.message) == (400, message)


@pytest.mark.parametrize("fields,key", [
    ({"sentences": ["a"], "beam_size": 2, "n_best": 3}, "decode.n_best"),
    ({"sentences": ["a"], "beam_size": "5"}, "decode.beam_size"),
    ({"sentences": ["a"], "length_penalty": 1e308}, "decode.length_penalty"),
])
def test_native_request_decode_settings_out_of_range_are_400_naming_the_key(fields, key):
    error = refused(native_request, fields, SERVER, LIMITS)
    assert error.status == 400 and error.message.startswith(f"Invalid request: {key} ")


def test_native_answer_is_translate_jsonl():
    assert native_answer([translation("A"), Translation("", 0.0, 0.0, [])]) == {"translations": [
        {"text": "A", "score": -1.0, "log_prob": -2.0, "n_best": [{"text": "A", "score": -1.0, "log_prob": -2.0}]},
        {"text": "", "score": 0.0, "log_prob": 0.0, "n_best": []}]}


@pytest.mark.parametrize("limits,message", [
    (Limits(queue_size=0), "--queue-size must be >= 1, got 0"),
    (Limits(max_connections=0), "--max-connections must be >= 1, got 0"),
    (Limits(timeout=float("nan")), "--timeout must be a number of seconds > 0, got nan"),
])
def test_limits_out_of_range_name_the_option(limits, message):
    with pytest.raises(UserError, match=message):
        limits.check()
