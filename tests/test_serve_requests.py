"""`lstmmt serve` against requests that should harm nobody: text a tokenizer cannot take beside
normal requests, JSON that breaks parsers, numbers out of every range, clients that leave or
stall, more connections than the server serves. One server process for the module, with a
short --timeout; the worker's isolation of a failing request is tested in-process.
"""

import asyncio
import concurrent.futures
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from lstmmt import Translator, UserError
from lstmmt.config import DecodeConfig
from lstmmt.serve.requests import Limits, ServeError, native_answer
from lstmmt.serve.worker import Job, Worker, translated
from lstmmt.translator import Alignment, Translation
from tests.helpers import SERVE_LINES, Server, request

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

TIMEOUT = 3  # the server's --timeout: the tests that wait for it wait this long
MAX_CONNECTIONS = 40
SOCKET_TIMEOUT = 60  # far longer than TIMEOUT: reaching it means the server never answered or closed


@pytest.fixture(scope="module")
def server(tiny_run):
    server = Server(tiny_run, "--timeout", str(TIMEOUT), "--max-connections", str(MAX_CONNECTIONS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(tiny_run) -> Translator:
    return Translator.load(tiny_run, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def expected(reference) -> dict[str, str]:
    """Each line's translation, translated alone."""
    return {line: reference.translate([line])[0].text for line in SERVE_LINES}


def connect(server: Server) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=SOCKET_TIMEOUT)


def head(path: str, length: int) -> bytes:
    """The request line and headers of a JSON POST whose body is `length` bytes."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` (a generous deadline only guards against a hang)."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def internal_errors(server: Server) -> list[str]:
    return [line for line in server.lines if "internal error" in line]


SURROGATE_BODIES = [  # raw bytes, so the JSON escape itself reaches the server
    ("/translate", b'{"q": ["A \\ud800 dog"], "source": "en", "target": "de"}'),
    ("/translate", b'{"q": "seven \\udfff", "source": "en", "target": "de"}'),
    ("/v1/translate", b'{"sentences": ["A \\ud800 dog", "seven"]}'),
    ("/v1/translate", b'{"sentences": ["\\udc80\\ud800"], "alignment": true}'),
    ("/translate", b'{"q": "nul \\u0000 byte", "source": "en", "target": "de"}'),
]


def test_text_with_lone_surrogates_harms_no_other_request(server, expected):
    """20 normal requests sent at once beside requests carrying lone surrogates and a NUL: every normal
    one gets its translation alone, the others 200 or 400, nobody a 500."""
    normal = [SERVE_LINES[i % len(SERVE_LINES)] for i in range(20)]
    barrier = threading.Barrier(len(normal) + len(SURROGATE_BODIES))

    def send(path: str, body: Any) -> tuple[int, Any]:
        barrier.wait()
        status, _, answer = request(server.url, path, body)
        return status, answer

    with concurrent.futures.ThreadPoolExecutor(len(normal) + len(SURROGATE_BODIES)) as pool:
        normal_answers = [pool.submit(send, "/translate", {"q": q, "source": "en", "target": "de"}) for q in normal]
        hostile_answers = [pool.submit(send, path, body) for path, body in SURROGATE_BODIES]
        got = [future.result() for future in normal_answers]
        hostile = [future.result() for future in hostile_answers]
    assert got == [(200, {"translatedText": expected[line]}) for line in normal]
    assert [status for status, _ in hostile] == [200] * len(hostile), hostile  # cleaned, as corpus text is
    assert internal_errors(server) == []


def nested(depth: int) -> bytes:
    return b'{"q": ' + b"[" * depth + b"]" * depth + b', "source": "en", "target": "de"}'


MALFORMED = [
    # (name, path, body, words in the error)
    ("nested 100,000 levels", "/translate", nested(100_000), "nested too deeply"),
    ("nested 100,000 levels, native", "/v1/translate", b'{"sentences": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "nested too deeply"),
    ("a 5,000-digit integer", "/v1/translate", b'{"sentences": ["seven"], "beam_size": 1' + b"0" * 5000 + b"}",
     "4300 digits"),
    ("Infinity", "/translate", b'{"q": "seven", "source": "en", "target": "de", "alternatives": Infinity}',
     "Infinity is not a JSON number"),
    ("NaN", "/v1/translate", b'{"sentences": ["seven"], "length_penalty": NaN}', "NaN is not a JSON number"),
    ("alternatives 1e400", "/translate", b'{"q": "seven", "source": "en", "target": "de", "alternatives": 1e400}',
     "alternatives must be a whole number"),
    ("length_penalty 1e400", "/v1/translate", b'{"sentences": ["seven"], "length_penalty": 1e400}', "length_penalty"),
    ("length_penalty -1e308", "/v1/translate", b'{"sentences": ["seven"], "length_penalty": -1e308}', "length_penalty"),
    ("length_penalty 1e308", "/v1/translate", b'{"sentences": ["seven"], "length_penalty": 1e308}', "length_penalty"),
    ("max_len_a 1e300", "/v1/translate", b'{"sentences": ["seven"], "max_len_a": 1e300}', "max_len_a"),
]


@pytest.mark.parametrize("name,path,body,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_parse_and_range_errors_are_400_with_a_json_message(server, name, path, body, words):
    status, _, answer = request(server.url, path, body)
    assert status == 400, answer
    assert isinstance(answer, dict) and list(answer) == ["error"] and words in answer["error"]
    assert internal_errors(server) == []


def test_an_error_message_never_echoes_a_whole_value(server):
    digits = "1" + "0" * 5000
    status, _, answer = request(server.url, "/translate", f"q=seven&source=en&target=de&alternatives={digits}".encode(),
                                "application/x-www-form-urlencoded")
    assert status == 400 and "alternatives must be a whole number" in answer["error"]
    assert len(answer["error"]) < 200
    fields = {"sentences": ["seven"]} | {f"field{i}" + "x" * 10_000: 1 for i in range(20)}
    status, _, answer = request(server.url, "/v1/translate", fields)
    assert status == 400 and "unknown field(s)" in answer["error"] and "17 more" in answer["error"]
    assert len(answer["error"]) < 500


def test_alternatives_are_ascii_digits(server):
    for digits, status in (("3", 200), ("\u0663", 400), ("1_0", 400), (" 1", 400)):
        body = {"q": "seven", "source": "en", "target": "de", "alternatives": digits}
        assert request(server.url, "/translate", body)[0] == status, digits


def test_web_pages_of_other_origins_may_call_the_api(server):
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=SOCKET_TIMEOUT)
    try:
        connection.request("OPTIONS", "/translate", headers={
            "Origin": "https://example.org", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        preflight = connection.getresponse()
        preflight.read()
        assert preflight.status == 200 and preflight.getheader("Access-Control-Allow-Origin") == "*"
        connection.request("POST", "/translate", json.dumps({"q": "seven", "source": "en", "target": "de"}),
                           {"Origin": "https://example.org", "Content-Type": "application/json"})
        answer = connection.getresponse()
        assert answer.status == 200 and answer.getheader("Access-Control-Allow-Origin") == "*"
        assert "translatedText" in json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize("penalty", [-10.0, 10.0])
def test_a_length_penalty_the_config_accepts_never_crashes_the_search(server, penalty):
    status, _, answer = request(server.url, "/v1/translate", {"sentences": SERVE_LINES[:3], "length_penalty": penalty})
    assert status == 200 or (status == 400 and "decode.length_penalty" in answer["error"]), answer


def test_a_client_that_disconnects_is_not_an_internal_error(server, expected):
    with connect(server) as sock:
        sock.sendall(head("/translate", 100) + b'{"q": "seven", ')
    # A later request whose sentence is truncated: its warning comes after anything logged about the disconnect.
    truncated = len([line for line in server.lines if "truncated" in line])
    assert request(server.url, "/v1/translate", {"sentences": ["seven " * 300]})[0] == 200
    wait_until(lambda: len([line for line in server.lines if "truncated" in line]) > truncated, "a truncation warning")
    assert internal_errors(server) == []
    assert request(server.url, "/translate", {"q": SERVE_LINES[0], "source": "en", "target": "de"})[2] == {
        "translatedText": expected[SERVE_LINES[0]]}


def test_a_body_shorter_than_its_content_length_gets_408_and_a_closed_connection(server):
    with connect(server) as sock:
        sock.sendall(head("/v1/translate", 100) + b'{"sentences": ["seven"')
        answer = until_closed(sock)
    status_line, _, body = answer.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": f"Request body not received within {TIMEOUT} s"}


@pytest.mark.parametrize("sent", [b"", b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
                         ids=["nothing", "part of the headers"])
def test_a_connection_that_sends_no_whole_request_is_closed(server, sent):
    with connect(server) as sock:
        sock.sendall(sent)
        assert until_closed(sock) == b""


def test_a_kept_alive_connection_that_stalls_in_its_next_request_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        rest = until_closed(sock)
    assert b"HTTP/1.1" not in rest  # no answer to the unfinished request, and the connection closed


def test_connections_beyond_the_limit_get_503(server):
    idle = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        status, _, _ = request(server.url, "/health")
    finally:
        for sock in idle:
            sock.close()
    assert status == 503
    wait_until(lambda: request(server.url, "/health")[0] == 200, "served again once the idle connections are gone")


def answer(worker: Worker, jobs: list[Job]) -> None:
    """What the worker's thread does with these jobs waiting, up to the last answer."""
    active: list[Job] = []
    for job in jobs:
        worker._take(job, active)
    while active:
        worker._search_next(active)


class FailingTranslator:
    """Translates a line to itself in capitals, and fails on a whole batch holding "bad input"."""

    decode = DecodeConfig()  # the server's settings: beam 5

    def translate(self, lines: list[str], alignment: bool = False, decode: DecodeConfig = None) -> list[Translation]:
        if "bad input" in lines:
            raise UserError("this line cannot be translated")
        return [Translation(line.upper(), 0.0, 0.0, []) for line in lines]


def test_the_worker_gives_an_error_only_to_the_request_that_fails_alone():
    worker = Worker(FailingTranslator(), Limits(), log=print)
    decode = DecodeConfig()
    jobs = [Job(["one", "two"], decode, False), Job(["bad input"], decode, False), Job(["three"], decode, False)]
    answer(worker, jobs)
    assert [t.text for t in jobs[0].future.result()] == ["ONE", "TWO"]
    assert isinstance(jobs[1].future.exception(), UserError)
    assert [t.text for t in jobs[2].future.result()] == ["THREE"]
    assert (worker.requests, worker.sentences) == (2, 3)


class RecordingTranslator(FailingTranslator):
    """A FailingTranslator that records the lines and decode settings of each call."""

    def __init__(self):
        self.calls: list[tuple[list[str], DecodeConfig]] = []

    def translate(self, lines: list[str], alignment: bool = False, decode: DecodeConfig = None) -> list[Translation]:
        self.calls.append((list(lines), decode))
        return super().translate(lines, alignment, decode)


def test_the_worker_searches_each_set_of_decode_settings_with_its_one_translator():
    recording = RecordingTranslator()
    worker = Worker(recording, Limits(), log=print)
    wide, narrow = DecodeConfig(beam_size=4), DecodeConfig(beam_size=2)
    jobs = [Job(["one"], wide, False), Job(["two"], narrow, False), Job(["three"], wide, False)]
    answer(worker, jobs)
    assert [[t.text for t in job.future.result()] for job in jobs] == [["ONE"], ["TWO"], ["THREE"]]
    assert worker.translator.calls == [(["two"], narrow), (["one", "three"], wide)]  # the cheaper group first


@pytest.mark.parametrize("batching", [True, False])
def test_a_large_request_is_searched_a_slice_at_a_time_beside_later_ones(batching):
    worker = Worker(RecordingTranslator(), Limits(batch_sentences=4, batching=batching), log=print)
    large, small = Job([f"l{i}" for i in range(10)], DecodeConfig(), False), Job(["s"], DecodeConfig(), False)
    answered: list[Job] = []
    for job in (large, small):
        job.future.add_done_callback(lambda _, job=job: answered.append(job))
    answer(worker, [large, small])
    searched = [lines for lines, _ in worker.translator.calls]
    if batching:  # one sentence of each in turn: the small request is answered with the first batch
        assert searched == [["l0", "l1", "l2", "s"], ["l3", "l4", "l5", "l6"], ["l7", "l8", "l9"]]
        assert answered == [small, large]
    else:  # one whole request at a time
        assert searched == [large.lines, ["s"]] and answered == [large, small]
    assert [t.text for t in large.future.result()] == [line.upper() for line in large.lines]
    assert (worker.requests, worker.sentences, worker.batches) == (2, 11, len(searched))


def test_a_wide_search_gets_thinner_slices_and_a_cheaper_group_is_searched_first():
    worker = Worker(RecordingTranslator(), Limits(batch_sentences=4), log=print)  # 4 sentences at beam 5 a batch
    wide, small = Job(["w0", "w1", "w2"], DecodeConfig(beam_size=10), False), Job(["s"], DecodeConfig(), False)
    answer(worker, [wide, small])
    assert [lines for lines, _ in worker.translator.calls] == [["s"], ["w0"], ["w1", "w2"]]


def test_a_request_whose_client_left_is_dropped_unsearched():
    recording = RecordingTranslator()
    worker = Worker(recording, Limits(), log=print)  # not started: the job waits in the queue

    async def gone() -> dict[str, Any]:  # the ASGI receive of a client that disconnected
        return {"type": "http.disconnect"}

    with pytest.raises(ServeError) as error:
        asyncio.run(translated(worker, gone, ["one"], DecodeConfig(), False))
    assert error.value.status == 499
    answer(worker, [worker.queue.get_nowait()])
    assert worker.translator.calls == [] and worker.requests == 0 and worker.pending == 0


def test_a_native_answer_holds_at_most_a_million_attention_weights():
    def translation(rows: int) -> Translation:
        weights = [[0.001] * 1000 for _ in range(rows)]
        return Translation("x", 0.0, 0.0, [], Alignment(["a"] * 1000, ["b"] * rows, weights, []))

    assert len(native_answer([translation(500), translation(500)])["translations"]) == 2
    with pytest.raises(ServeError, match="1,001,000 attention weights"):
        native_answer([translation(500), translation(501)])


def test_the_worker_logs_truncated_request_sentences_and_leaves_the_translator_it_was_given(reference):
    logged: list[str] = []
    worker = Worker(reference, Limits(), log=logged.append)
    jobs = [Job(["seven " * 300], reference.decode, False), Job(["seven " * 300] * 40, reference.decode, False)]
    answer(worker, jobs)
    assert [len(job.future.result()) for job in jobs] == [1, 40]
    assert logged == ["warning: a request sentence has 600 tokens, truncated to 250",
                      "warning: 40 more request sentences of that batch were truncated too"]
    assert reference.warn is not worker.translator.warn
