"""Child runs: a corpus encoded with a parent's tokenizer (`preprocess --tokenizer-from`)."""

import json
from pathlib import Path

import pytest

from tests.helpers import invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


def corpus_of(run: Path) -> Path:
    """The tiny run's corpus prefix (tests/helpers.py make_tiny_run writes it beside the run)."""
    return run.parent / "corpus"


def child_args(parent: Path, child: Path, *extra: object, corpus: Path | None = None) -> list[object]:
    corpus = corpus or corpus_of(parent)
    return ["preprocess", child, "--src-lang", "en", "--tgt-lang", "de", "--train", corpus / "valid",
            "--valid", corpus / "test", "--tokenizer-from", parent, *extra]


@pytest.fixture(scope="module")
def release(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent-release") / "release"
    result = invoke("export", tiny_run, "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("kind", ["run", "release"])
def test_child_tokenizer_is_byte_identical_to_the_parent_s(tiny_run, release, tmp_path, kind):
    parent = tiny_run if kind == "run" else release
    child = tmp_path / "child"
    result = invoke(*child_args(parent, child, corpus=corpus_of(tiny_run)))
    assert result.exit_code == 0, result.output
    for name in ("spm.model", "spm.vocab"):
        assert (child / "tokenizer" / name).read_bytes() == (tiny_run / "tokenizer" / name).read_bytes()
    meta = json.loads((child / "data" / "meta.json").read_text())
    assert meta["tokenizer"]["from"]["path"] == str(parent.resolve())
    assert meta["tokenizer"]["src_vocab_size"] == 100


@pytest.mark.parametrize("extra, named", [(["--vocab-size", "90"], "tokenizer.vocab_size"),
                                          (["--set", "tokenizer.model_type=bpe"], "tokenizer.model_type")])
def test_changed_tokenizer_settings_are_one_line_and_write_nothing(tiny_run, tmp_path, extra, named):
    child = tmp_path / "child"
    result = invoke(*child_args(tiny_run, child, *extra))
    assert result.exit_code == 1 and named in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not child.exists()


def test_other_languages_are_one_line_and_write_nothing(tiny_run, tmp_path):
    child = tmp_path / "child"
    args = child_args(tiny_run, child)
    args[args.index("de")] = "fr"
    result = invoke(*args)
    assert result.exit_code == 1 and "en->de" in result.output and "en->fr" in result.output
    assert not child.exists()
