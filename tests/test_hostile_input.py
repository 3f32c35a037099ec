"""Hostile input for translate and evaluate: whatever bytes come in, translate writes exactly
one line per input line, in order, and evaluate counts lines the same way or says clearly
why it cannot score.

One tiny model is trained once for the module; it translates badly, which is fine: these
tests check the plumbing around the search, not the translations.
"""

import functools
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lstmmt import linestream, translator as translator_module
from lstmmt.config import BYTES_PER_TOKEN, DecodeConfig, ModelConfig
from lstmmt.model import Seq2Seq
from lstmmt.translator import Translator
from tests.helpers import TINY_RUN, invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import toy
from common import MeasuredProcess

HOSTILE_RUN = [
    *TINY_RUN,
    # An untrained decoder rarely stops before the length limit: a short limit keeps the tests
    # fast, and outputs whose length follows the source's make misplaced lines visible.
    "--set", "decode.max_len_a=0.5", "--set", "decode.max_len_b=4",
]
MAX_SOURCE_TOKENS = 250  # the config default, which the tests' warnings name

# The characters besides "\n" that str.splitlines(), and so many a reader, takes for line breaks.
LINE_SEPARATORS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]

# (input line, whether its output must be empty), in the order the end-to-end tests feed them.
HOSTILE_LINES: list[tuple[bytes, bool]] = [
    (b"twenty-one", False),
    (b"", True),
    (b"  \t  ", True),
    (b"\x00", False),
    (b"\x1b[31mseven\x1b[0m", False),
    (b"four\x0cfive", False),
    ("six\x85seven".encode(), False),
    ("eight\u2028nine".encode(), False),
    ("\u2029 \x0b\x1c\x1d\x1e".encode(), True),
    (b"ten\rtwelve", False),
    (b"\xff\xfe broken \xc3", False),  # line 11: invalid UTF-8
    (b"one " * 10_000, False),  # line 12: 10,000 words, far over max_source_tokens
    ("\ufeff\u200b\ufffd".encode(), True),  # only characters SentencePiece drops: nothing to translate
    (b"half past seven", False),
]
INVALID_UTF8_LINE, LONG_LINE = 11, 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory with a 30-step model: valid, fast, and no good at translating."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, pairs in toy.generate(300, 20, 0, seed=11).items():
        (corpus / f"{split}.en").write_text("".join(en + "\n" for en, _ in pairs), encoding="utf-8")
        (corpus / f"{split}.de").write_text("".join(de + "\n" for _, de in pairs), encoding="utf-8")
    result = invoke("preprocess", root / "run", "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "train",
                    "--valid", corpus / "valid", *HOSTILE_RUN)
    assert result.exit_code == 0, result.output
    result = invoke("train", root / "run", "--max-steps", "30")
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def translator(run):
    """translate(data, beam, n_best) -> output text, through translate_stream with the run's model."""
    loaded = Translator.load(run, "best", "cpu")
    assert loaded.decode.max_source_tokens == MAX_SOURCE_TOKENS

    def stream(data: bytes, beam: int = 1, n_best: int = 1, chunk_lines: int = 5000) -> str:
        decode = loaded.decode.updated(beam_size=beam, n_best=n_best)
        target = io.StringIO()
        translator = Translator(loaded.models, loaded.tokenizer, decode, loaded.device, loaded.precision)
        linestream.translate_stream(translator, io.BytesIO(data), target, chunk_lines=chunk_lines)
        return target.getvalue()

    return stream


def output_lines(text: str, expected: int) -> list[str]:
    """The lines of translate's output, checking they number `expected` by every line-splitting rule."""
    assert text.count("\n") == expected and (text == "" or text.endswith("\n"))
    assert len(text.splitlines()) == expected, "an output line holds a line separator"
    return text.split("\n")[:-1]


def hostile_input() -> bytes:
    return b"".join(line + b"\n" for line, _ in HOSTILE_LINES)


def check_hostile_output(text: str, stream) -> None:
    """One line per input line, blank where required, and each line's translation where it belongs:
    the output of a line is the same when it is translated alone."""
    for (line, blank), output in zip(HOSTILE_LINES, output_lines(text, len(HOSTILE_LINES))):
        if blank:
            assert output == "", line
        else:
            assert output == output_lines(stream(line + b"\n"), 1)[0], line


def test_hostile_file_keeps_line_count_and_order_and_warns(run, translator, tmp_path):
    source, target = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_bytes(hostile_input())
    result = invoke("translate", run, "-i", source, "-o", target, "--beam", "1")
    assert result.exit_code == 0, result.output
    check_hostile_output(target.read_bytes().decode("utf-8"), translator)
    assert re.findall(r"line (\d+): invalid UTF-8 replaced by U\+FFFD", result.stderr) == [str(INVALID_UTF8_LINE)]
    assert re.findall(rf"line (\d+): \d+ tokens, truncated to {MAX_SOURCE_TOKENS}", result.stderr) == [str(LONG_LINE)]
    assert "Traceback" not in result.output


def test_stdin_to_stdout_keeps_the_invariant(run, translator):
    result = invoke("translate", run, "--beam", "2", input=hostile_input())
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stdout  # warnings go to stderr, never into the translations
    beam2 = functools.partial(translator, beam=2)
    check_hostile_output(result.stdout_bytes.decode("utf-8"), beam2)


def feed(stream, blocks) -> threading.Thread:
    """A thread writing `blocks` into `stream`, then closing it (a reader that stops early is no error)."""
    def write() -> None:
        try:
            for block in blocks:
                stream.write(block)
            stream.close()
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_long_line_is_cut_while_it_is_read(monkeypatch):
    """Only the first bytes of a line are kept, at a character boundary, with one warning naming
    the line; the rest is skipped up to the newline and the next line is whole."""
    warnings: list[str] = []
    monkeypatch.setattr(linestream, "warn", warnings.append)
    read, write = os.pipe()
    # The 1,000-byte cut falls inside an "ä" (2 bytes): the line keeps "a" and 499 of them.
    blocks = [b"a" + "ä".encode() * 600, *[b"z" * (1 << 20)] * 8, b"\nshort\n"]
    feeder = feed(open(write, "wb", buffering=0), blocks)
    with open(read, "rb") as source:
        chunks = list(linestream.read_chunks(source, limit=1000))
    feeder.join(60)
    assert [line for _, lines in chunks for line in lines] == ["a" + "ä" * 499, "short"]
    assert warnings == ["line 1: longer than 1,000 bytes, only the first 1,000 read (the rest is skipped)"]


def translate_measured(run: Path, blocks: list[bytes]) -> tuple[bytes, str, int]:
    """(stdout, stderr, peak RSS in bytes) of `lstmmt translate` fed `blocks` through a pipe; the
    peak is the command's own (benchmarks' MeasuredProcess), whatever this test process holds."""
    command = [sys.executable, "-m", "lstmmt", "translate", str(run), "--device", "cpu", "--beam", "1"]
    measured = MeasuredProcess(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})
    process = measured.process
    feeder = feed(process.stdin, blocks)
    answers: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name: answers.update({name: getattr(process, name).read()}))
               for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    for thread in (feeder, *readers):
        thread.join(120)
    stderr = answers["stderr"].decode()
    usage = measured.wait()
    assert usage["exit_code"] == 0, stderr
    return answers["stdout"], stderr, int(usage["peak_rss_mb"] * 2**20)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_300_mb_line_without_newline_is_read_in_bounded_memory(run):
    """Reading it takes less than 100 MiB more than reading one short line (holding it would take 600)."""
    _, _, short_peak = translate_measured(run, [b"seven\n"])
    stdout, stderr, peak = translate_measured(run, [b"seven " * (1 << 17)] * (300 * (1 << 20) // (6 << 17)))
    assert stdout.count(b"\n") == 1
    assert f"line 1: longer than {MAX_SOURCE_TOKENS * BYTES_PER_TOKEN:,} bytes" in stderr
    assert peak - short_peak < 100 << 20, f"peak RSS {peak >> 20} MiB against {short_peak >> 20} MiB for one short line"


def test_crlf_input_counts_lines_like_lf(translator):
    assert output_lines(translator(b"a\r\nb\r\n"), 2) == output_lines(translator(b"a\nb\n"), 2)
    assert output_lines(translator(b"\r\n\r\n \r\n"), 3) == ["", "", ""]
    assert output_lines(translator(b"no final newline"), 1)


def test_lines_with_nothing_to_translate_keep_their_row_in_n_best(translator):
    rows = [row.split(" ||| ") for row in output_lines(translator(b"one\n\n\xef\xbb\xbf\ntwo\n", beam=2, n_best=2), 6)]
    assert [row[0] for row in rows] == ["0", "0", "1", "2", "3", "3"]
    assert rows[2] == ["1", "", "0.0000"] and rows[3] == ["2", "", "0.0000"]


class SeparatorTokenizer:
    """Decodes everything to text full of line separators, as a tokenizer trained on
    untidied text might: translate must still write one line per hypothesis."""

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return [[5, 6] for _ in lines]

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return ["a" + "".join(LINE_SEPARATORS) + "\nb"] * len(ids)


@pytest.mark.parametrize("n_best", [1, 2])
def test_decoded_line_separators_never_split_an_output_line(n_best):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embed_size=8, hidden_size=8, encoder_layers=1, dropout=0.0), 10, 10, joint_vocab=True)
    decode = DecodeConfig(beam_size=2, n_best=n_best, max_len_a=0.0, max_len_b=3)
    translation = Translator(model.eval(), SeparatorTokenizer(), decode, torch.device("cpu")).translate(["x"])[0]
    lines = linestream.format_output(translation, n_best, line_index=0)
    assert len(lines) == n_best
    assert all(len(line.splitlines()) == 1 and "\n" not in line for line in lines)


# Lines of every kind: arbitrary text (control characters and separators included), arbitrary
# bytes (mostly invalid UTF-8), blank lines, and lines over max_source_tokens.
any_text = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=30).map(str.encode)
any_bytes = st.binary(max_size=30).map(lambda data: data.replace(b"\n", b""))
blank = st.lists(st.sampled_from([" ", "\t", *LINE_SEPARATORS]), max_size=4).map(lambda chars: "".join(chars).encode())
long_line = st.integers(MAX_SOURCE_TOKENS, 2 * MAX_SOURCE_TOKENS).map(lambda words: b"seven " * words)
toy_line = st.sampled_from([en.encode() for en, _ in toy.generate(30, 0, 0)["train"]])
any_line = st.one_of(any_text, any_bytes, blank, long_line, toy_line)


@settings(max_examples=25, deadline=None)
@given(lines=st.lists(any_line, max_size=8), ending=st.sampled_from([b"\n", b"\r\n"]), chunk_lines=st.integers(1, 4))
def test_any_input_gives_one_output_line_per_input_line(translator, lines, ending, chunk_lines):
    text = translator(b"".join(line + ending for line in lines), chunk_lines=chunk_lines)
    for line, output in zip(lines, output_lines(text, len(lines))):
        if not line.decode("utf-8", errors="replace").strip():
            assert output == ""


@pytest.mark.parametrize("existing", [None, "old translations\n"])
def test_output_file_appears_only_when_complete(run, tmp_path, monkeypatch, existing):
    """A failure after the first chunk was written leaves the old file (or none), and no temporary file."""
    target = tmp_path / "out.txt"
    if existing is not None:
        target.write_text(existing, encoding="utf-8")
    (tmp_path / "in.txt").write_text("one\ntwo\nthree\nfour\n", encoding="utf-8")
    monkeypatch.setattr(linestream, "translate_stream", functools.partial(linestream.translate_stream, chunk_lines=2))
    search, calls = translator_module.search_corpus, []

    def fail_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".out.txt.")]
            assert len(partial) == 1 and partial[0].read_text(encoding="utf-8").count("\n") == 2
            raise RuntimeError("search failed midway")
        return search(*args, **kwargs)

    monkeypatch.setattr(translator_module, "search_corpus", fail_on_second_chunk)
    result = invoke("translate", run, "-i", tmp_path / "in.txt", "-o", target, "--beam", "1")
    assert result.exit_code == 1 and len(calls) == 2
    assert "internal error: RuntimeError: search failed midway" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt"] + ["out.txt"] * (existing is not None))
    if existing is not None:
        assert target.read_text(encoding="utf-8") == existing


def test_evaluate_refuses_files_of_different_length(tmp_path):
    (tmp_path / "hyp.txt").write_text("a b\nc d\ne f\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("a b\nc d\n", encoding="utf-8")
    result = invoke("evaluate", tmp_path / "run", "--hyp", tmp_path / "hyp.txt", "--ref", tmp_path / "ref.txt")
    assert result.exit_code == 1
    assert "hypotheses have 3 lines but references have 2" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "run/scores").exists()


@pytest.mark.parametrize("broken, message",
                         [("missing", "file not found: {path}"), ("directory", "cannot read {path}")])
@pytest.mark.parametrize("side", ["hyp", "ref"])
def test_evaluate_names_an_unreadable_file(tmp_path, side, broken, message):
    files = {"hyp": tmp_path / "hyp.txt", "ref": tmp_path / "ref.txt"}
    for path in files.values():
        path.write_text("a b\n", encoding="utf-8")
    files[side].unlink()
    if broken == "directory":
        files[side].mkdir()
    result = invoke("evaluate", tmp_path / "run", "--hyp", files["hyp"], "--ref", files["ref"])
    assert result.exit_code == 1
    assert message.format(path=files[side]) in result.stderr
    assert "Traceback" not in result.output


def test_evaluate_splits_lines_like_translate(tmp_path):
    """Separators inside a line and CRLF endings must not change the line count, or every
    later line would be scored against the wrong reference."""
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes("the\u2028cat sat\r\non the\x0cmat\r\n\r\n".encode())
    ref.write_bytes("the\x85cat sat\non the\u2029mat\n\n".encode())
    result = invoke("evaluate", tmp_path / "run", "--hyp", hyp, "--ref", ref, "--json")
    assert result.exit_code == 0, result.output
    assert '"lines": 3' in result.stdout
