"""The pipeline on real text: a 3,000-pair Multi30k slice through the CLI (skipped where the data is absent)."""

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import invoke

DATA = Path(__file__).resolve().parents[2] / "shared/data/multi30k"
pytestmark = pytest.mark.skipif(not (DATA / "train.en.gz").exists(), reason=f"Multi30k not found at {DATA}")


def head(split: str, lang: str, lines: int, out: Path) -> None:
    with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as source:
        out.write_text("".join(next(source) for _ in range(lines)), encoding="utf-8")


@pytest.mark.slow
def test_multi30k_slice_runs_end_to_end(tmp_path):
    for lang in ("en", "de"):
        head("train", lang, 3000, tmp_path / f"train.{lang}")
        head("val", lang, 100, tmp_path / f"valid.{lang}")
        head("test_2016_flickr", lang, 50, tmp_path / f"test.{lang}")
    run = tmp_path / "run"
    result = invoke("preprocess", run, "--src-lang", "en", "--tgt-lang", "de", "--train", tmp_path / "train",
                    "--valid", tmp_path / "valid", "--test", tmp_path / "test", "--vocab-size", "4000")
    assert result.exit_code == 0, result.output
    result = invoke("train", run, "--max-steps", "20", "--set", "train.valid_every=20",
                    "--set", "train.batch_tokens=2000")
    assert result.exit_code == 0, result.output
    result = invoke("translate", run, "-i", tmp_path / "test.en", "-o", tmp_path / "test.hyp", "--beam", "5")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "test.hyp").read_text(encoding="utf-8").splitlines()) == 50
    result = invoke("evaluate", run, "--hyp", tmp_path / "test.hyp", "--ref", tmp_path / "test.de", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["lines"] == 50 and scores["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
