"""`lstmmt serve` as a real server process on 127.0.0.1: LibreTranslate's API through its
own client (libretranslatepy), the native API, bad requests, concurrent clients, a full
queue, SIGTERM under load, and the web page in headless chromium.

The model is the shared 30-step tiny run (tests/conftest.py); answers are compared with
what an in-process Translator with the same settings gives each sentence alone.
"""

import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lstmmt import Translator
from lstmmt.cli import app
from lstmmt.translator import as_dict
from tests.helpers import SERVE_LINES, Server, request

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[dev]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[dev]')")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def reference(run) -> Translator:
    return Translator.load(run, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def expected(reference) -> dict[str, str]:
    """Each line's translation, translated alone."""
    return {line: reference.translate([line])[0].text for line in SERVE_LINES}


@pytest.fixture(scope="module")
def server(run):
    server = Server(run, "--max-body", "20000")
    yield server
    server.stop()


def test_libretranslate_client_gets_what_translator_gives(server, expected):
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(server.url)
    assert client.languages() == [{"code": "en", "name": "English", "targets": ["de"]},
                                  {"code": "de", "name": "German", "targets": []}]
    for line in SERVE_LINES[:4]:
        assert client.translate(line, "en", "de") == expected[line]
    assert client.translate(SERVE_LINES[0], "auto", "de") == expected[SERVE_LINES[0]]
    two = f"{SERVE_LINES[1]}\n\n{SERVE_LINES[2]}"
    assert client.translate(two, "en", "de") == f"{expected[SERVE_LINES[1]]}\n\n{expected[SERVE_LINES[2]]}"


def test_translate_takes_json_lists_form_data_and_alternatives(server, expected, run):
    status, _, answer = request(server.url, "/translate", {"q": SERVE_LINES[:3], "source": "auto", "target": "de"})
    assert status == 200
    assert answer == {"translatedText": [expected[line] for line in SERVE_LINES[:3]],
                      "detectedLanguage": [{"confidence": 100.0, "language": "en"}] * 3}
    boundary = "lstmmt-test-boundary"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                    for k, v in [("q", SERVE_LINES[3]), ("source", "en"), ("target", "de")])
    status, _, answer = request(server.url, "/translate", (parts + f"--{boundary}--\r\n").encode(),
                                f"multipart/form-data; boundary={boundary}")
    assert (status, answer) == (200, {"translatedText": expected[SERVE_LINES[3]]})
    body = {"q": SERVE_LINES[0], "source": "en", "target": "de", "alternatives": 2}
    status, _, answer = request(server.url, "/translate", body)
    best = Translator.load(run, device="cpu", precision="fp32", n_best=3).translate([SERVE_LINES[0]])[0]
    assert status == 200 and answer == {"translatedText": best.text, "alternatives": [c.text for c in best.n_best[1:]]}


def test_native_api_returns_n_best_with_scores_and_alignments(server, run):
    lines = [SERVE_LINES[0], "", SERVE_LINES[2], "   "]
    status, _, answer = request(server.url, "/v1/translate", {"sentences": lines, "beam_size": 3, "n_best": 3,
                                                              "length_penalty": 0.5, "alignment": True})
    assert status == 200
    want = [as_dict(t) for t in Translator.load(run, device="cpu", precision="fp32", beam_size=3, n_best=3,
                                                length_penalty=0.5).translate(lines, alignment=True)]
    got = answer["translations"]
    assert [t["text"] for t in got] == [t["text"] for t in want]
    assert [[c["text"] for c in t["n_best"]] for t in got] == [[c["text"] for c in t["n_best"]] for t in want]
    assert [len(t["n_best"]) for t in got] == [3, 0, 3, 0]
    for g, w in zip(got, want):
        assert [c["score"] for c in g["n_best"]] == pytest.approx([c["score"] for c in w["n_best"]], rel=1e-5, abs=1e-6)
        if g["n_best"]:
            assert g["n_best"][0]["score"] == g["score"] >= g["n_best"][-1]["score"]
        assert ("alignment" in g) == ("alignment" in w)
        if "alignment" in g:
            assert g["alignment"]["words"] == w["alignment"]["words"]
            assert g["alignment"]["target"] == w["alignment"]["target"]
    status, _, answer = request(server.url, "/v1/translate", {"sentences": []})
    assert (status, answer) == (200, {"translations": []})


BAD_REQUESTS = [
    # (name, path, body, content type, method, status, words in the error)
    ("malformed JSON", "/translate", b'{"q": "seven", "source": ', "application/json", None, 400, "malformed JSON"),
    ("JSON not an object", "/v1/translate", b'["seven"]', "application/json", None, 400, "must be an object"),
    ("missing q", "/translate", {"source": "en", "target": "de"}, "application/json", None, 400, "missing q"),
    ("empty q", "/translate", b"q=&source=en&target=de", "application/x-www-form-urlencoded", None, 400, "missing q"),
    ("missing target", "/translate", {"q": "seven", "source": "en"}, "application/json", None, 400, "missing target"),
    ("unknown pair", "/translate", {"q": "seven", "source": "en", "target": "fr"}, "application/json", None, 400,
     "en to de"),
    ("reversed pair", "/translate", {"q": "seven", "source": "de", "target": "en"}, "application/json", None, 400,
     "en to de"),
    ("html format", "/translate", {"q": "x", "source": "en", "target": "de", "format": "html"}, "application/json",
     None, 400, "plain text"),
    ("over-size body", "/translate", {"q": "seven " * 5000, "source": "en", "target": "de"}, "application/json",
     None, 413, "limit of 20000 bytes"),
    ("wrong content type", "/translate", b"seven", "text/plain", None, 415, "Unsupported content type text/plain"),
    ("form to the native API", "/v1/translate", b"sentences=seven", "application/x-www-form-urlencoded", None, 415,
     "application/json"),
    ("too many sentences", "/v1/translate", {"sentences": ["seven"] * 101}, "application/json", None, 400,
     "limit of 100"),
    ("sentences not a list", "/v1/translate", {"sentences": "seven"}, "application/json", None, 400, "list of strings"),
    ("unknown field", "/v1/translate", {"sentences": ["x"], "precision": "bf16"}, "application/json", None, 400,
     "unknown field(s) precision"),
    ("n_best above beam", "/v1/translate", {"sentences": ["x"], "beam_size": 2, "n_best": 3}, "application/json",
     None, 400, "decode.n_best"),
    ("beam above the limit", "/v1/translate", {"sentences": ["x"], "beam_size": 500}, "application/json", None, 400,
     "limit of 16"),
    ("longer outputs than the server's", "/v1/translate", {"sentences": ["x"], "max_len_b": 1000}, "application/json",
     None, 400, "max_len_b 1000 is above"),
    ("string beam", "/v1/translate", {"sentences": ["x"], "beam_size": "5"}, "application/json", None, 400,
     "beam_size"),
    ("unknown path", "/translator/translate", {"q": "x"}, "application/json", None, 404, "Not Found"),
    ("wrong method", "/translate", None, None, "GET", 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("name,path,body,content_type,method,status,words", BAD_REQUESTS,
                         ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_answering(server, expected, name, path, body,
                                                                          content_type, method, status, words):
    got, _, answer = request(server.url, path, body, content_type, method)
    assert got == status, answer
    assert isinstance(answer, dict) and list(answer) == ["error"] and words in answer["error"]
    got, _, answer = request(server.url, "/translate", {"q": SERVE_LINES[0], "source": "en", "target": "de"})
    assert (got, answer) == (200, {"translatedText": expected[SERVE_LINES[0]]})


def test_health_and_the_page(server):
    status, _, health = request(server.url, "/health")
    assert status == 200
    assert health["status"] == "ok" and (health["source"], health["target"]) == ("en", "de")
    assert (health["device"], health["precision"], health["batching"]) == ("cpu", "fp32", True)
    status, headers, page = request(server.url, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<textarea" in page and "/translate" in page
    assert "http" not in page.replace("http-equiv", "")  # no external assets


def test_eight_concurrent_clients_get_correct_answers(server, expected):
    """8 clients x 50 requests, LibreTranslate and native alternating: every answer is the
    sentence's translation alone, though sentences of different requests share batches."""
    before = request(server.url, "/health")[2]["served"]
    failures: list[str] = []

    def client(number: int) -> None:
        for i in range(50):
            line = SERVE_LINES[(number + i) % len(SERVE_LINES)]
            if i % 2:
                status, _, answer = request(server.url, "/translate", {"q": line, "source": "en", "target": "de"})
                text = answer.get("translatedText") if isinstance(answer, dict) else answer
            else:
                status, _, answer = request(server.url, "/v1/translate", {"sentences": [line]})
                text = answer["translations"][0]["text"] if status == 200 else answer
            if status != 200 or text != expected[line]:
                failures.append(f"client {number} request {i}: {status} {text!r}, expected {expected[line]!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    after = request(server.url, "/health")[2]["served"]
    assert after["requests"] - before["requests"] == 400
    assert after["batches"] - before["batches"] < 400  # requests that waited together were searched together


def test_a_full_queue_answers_503_with_retry_after(run, expected):
    server = Server(run, "--queue-size", "1", "--no-batching", "--beam", "8")
    try:
        answers: list[tuple[int, dict, Any]] = []
        body = {"sentences": SERVE_LINES * 4}

        def client() -> None:
            answers.append(request(server.url, "/v1/translate", body))

        threads = [threading.Thread(target=client) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        busy = [(headers, answer) for status, headers, answer in answers if status == 503]
        assert busy, [a[0] for a in answers]
        assert all(status in (200, 503) for status, _, _ in answers)
        assert all(int(headers["retry-after"]) >= 1 and "busy" in answer["error"] for headers, answer in busy)
        status, _, answer = request(server.url, "/translate", {"q": SERVE_LINES[0], "source": "en", "target": "de"})
        assert status == 200
    finally:
        server.stop()


def test_sigterm_under_load_answers_requests_in_flight_and_exits_0(run, expected):
    server = Server(run, "--no-batching", "--beam", "8")
    in_flight: list[tuple[int, Any]] = []
    later: list[str] = []
    stop = threading.Event()
    body = {"sentences": SERVE_LINES * 4}

    def one_request() -> None:
        status, _, answer = request(server.url, "/v1/translate", body)
        in_flight.append((status, answer))

    def looper() -> None:  # keeps sending until the server is gone: answers or refused connections, never a 5xx
        while not stop.is_set():
            try:
                status, _, _ = request(server.url, "/health", timeout=30)
                if status != 200:
                    later.append(f"status {status}")
                time.sleep(0.05)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)

    try:
        senders = [threading.Thread(target=one_request) for _ in range(6)]
        for thread in senders:
            thread.start()
        loopers = [threading.Thread(target=looper) for _ in range(2)]
        for thread in loopers:
            thread.start()
        deadline = time.monotonic() + 120
        while True:  # until all 6 reached the server (answered or in flight)
            health = request(server.url, "/health")[2]
            if health["served"]["requests"] + health["queue"]["in_flight"] >= 6:
                break
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        unanswered = health["queue"]["in_flight"]
        for thread in senders:
            thread.join()
        assert server.proc.wait(timeout=180) == 0, "\n".join(server.lines)
    finally:
        stop.set()
        server.stop()
    want = [t["text"] for t in (as_dict(t) for t in Translator.load(run, device="cpu", precision="fp32", beam_size=8)
                                .translate(body["sentences"]))]
    assert len(in_flight) == 6
    assert all(status == 200 and [t["text"] for t in answer["translations"]] == want for status, answer in in_flight)
    assert later == []
    assert unanswered >= 1  # the signal came while requests were in flight
    assert any(line.startswith("Stopped after") for line in server.lines), server.lines


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None,
                    reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_web_page_translates_in_headless_chromium(server, expected, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 600})
        try:
            page = browser.new_page()
            page.goto(server.url + "/", timeout=120_000)
            page.wait_for_function("document.getElementById('pair').textContent.includes('English')", timeout=120_000)
            assert page.text_content("#pair") == "English \u2192 German"
            page.fill("#source", f"{SERVE_LINES[0]}\n{SERVE_LINES[1]}")
            page.click("#translate")
            want = f"{expected[SERVE_LINES[0]]}\n{expected[SERVE_LINES[1]]}"
            page.wait_for_function("want => document.getElementById('translation').textContent === want", arg=want,
                                   timeout=120_000)
            assert page.text_content("#translation") == want
            assert page.text_content("#status") == ""
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000


runner = CliRunner()


def test_serve_help_names_every_option():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--host", "--port", "--checkpoint", "--device", "--beam", "--batching", "--no-batching",
                   "--queue-size", "--max-body", "--max-sentences", "--batch-sentences", "--max-beam", "--threads",
                   "--shutdown-timeout", "--timeout", "--max-connections"):
        assert option in result.output


@pytest.mark.parametrize("args,message", [
    (["--queue-size", "0"], "--queue-size must be >= 1"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--threads", "0", "--port", "0"], "--threads must be in [1, 1024]"),
    (["--threads", "100000", "--port", "0"], "--threads must be in [1, 1024]"),
    (["--timeout", "0"], "--timeout must be a number of seconds > 0"),
    (["--timeout", "inf"], "--timeout must be a number of seconds > 0"),
    (["--max-connections", "0"], "--max-connections must be >= 1"),
])
def test_serve_option_mistakes_are_one_line(run, args, message):
    result = runner.invoke(app, ["serve", str(run), *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_a_busy_port_is_one_line(run):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["serve", str(run), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1:" in result.output and "Traceback" not in result.output


def test_serve_option_mistakes_come_before_the_model_loads(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "no-run"), "--shutdown-timeout", "0"])
    assert result.exit_code == 1
    assert "--shutdown-timeout must be a number of seconds > 0" in result.output and "Traceback" not in result.output
