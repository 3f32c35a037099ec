"""The toy corpus generator (data/toy.py): its German is the spec, written out by hand here."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

TOY_PATH = Path(__file__).resolve().parent.parent / "data" / "toy.py"


def _load_toy():
    """data/ is not a package (the script must run before lstmmt is installed), so load it by path."""
    spec = importlib.util.spec_from_file_location("toy", TOY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = _load_toy()


@pytest.mark.parametrize(
    ("n", "english", "german"),
    [
        (0, "zero", "null"),
        (1, "one", "eins"),
        (7, "seven", "sieben"),
        (16, "sixteen", "sechzehn"),
        (17, "seventeen", "siebzehn"),
        (21, "twenty-one", "einundzwanzig"),
        (30, "thirty", "dreißig"),
        (47, "forty-seven", "siebenundvierzig"),
        (60, "sixty", "sechzig"),
        (100, "one hundred", "einhundert"),
        (101, "one hundred and one", "einhunderteins"),
        (345, "three hundred and forty-five", "dreihundertfünfundvierzig"),
        (1000, "one thousand", "eintausend"),
        (1005, "one thousand and five", "eintausendfünf"),
        (1234, "one thousand two hundred and thirty-four", "eintausendzweihundertvierunddreißig"),
        (7030, "seven thousand and thirty", "siebentausenddreißig"),
        (9999, "nine thousand nine hundred and ninety-nine", "neuntausendneunhundertneunundneunzig"),
    ],
)
def test_cardinals(n: int, english: str, german: str) -> None:
    assert toy.en_number(n) == english
    assert toy.de_number(n) == german


@pytest.mark.parametrize(
    ("year", "english", "german"),
    [
        (1984, "nineteen eighty-four", "neunzehnhundertvierundachtzig"),
        (1900, "nineteen hundred", "neunzehnhundert"),
        (1905, "nineteen oh five", "neunzehnhundertfünf"),
        (1801, "eighteen oh one", "achtzehnhunderteins"),
        (2000, "two thousand", "zweitausend"),
        (2005, "two thousand and five", "zweitausendfünf"),
        (2021, "twenty twenty-one", "zweitausendeinundzwanzig"),
    ],
)
def test_years(year: int, english: str, german: str) -> None:
    assert toy.en_year(year) == english
    assert toy.de_year(year) == german


@pytest.mark.parametrize(
    ("n", "english", "nominative", "dative"),
    [
        (1, "first", "erste", "ersten"),
        (3, "third", "dritte", "dritten"),
        (7, "seventh", "siebte", "siebten"),
        (8, "eighth", "achte", "achten"),
        (12, "twelfth", "zwölfte", "zwölften"),
        (19, "nineteenth", "neunzehnte", "neunzehnten"),
        (20, "twentieth", "zwanzigste", "zwanzigsten"),
        (21, "twenty-first", "einundzwanzigste", "einundzwanzigsten"),
        (31, "thirty-first", "einunddreißigste", "einunddreißigsten"),
    ],
)
def test_ordinals(n: int, english: str, nominative: str, dative: str) -> None:
    assert toy.en_ordinal(n) == english
    assert toy.de_ordinal(n) == nominative
    assert toy.de_ordinal(n, dative=True) == dative


@pytest.mark.parametrize(
    ("hour", "minute", "english", "german"),
    [
        (1, 0, "one o'clock", "ein Uhr"),
        (7, 30, "half past seven", "halb acht"),
        (12, 30, "half past twelve", "halb eins"),
        (8, 45, "a quarter to nine", "Viertel vor neun"),
        (1, 15, "a quarter past one", "Viertel nach eins"),
        (6, 10, "ten past six", "zehn nach sechs"),
        (6, 25, "twenty-five past six", "fünf vor halb sieben"),
        (6, 35, "twenty-five to seven", "fünf nach halb sieben"),
        (12, 50, "ten to one", "zehn vor eins"),
        (3, 1, "one minute past three", "eine Minute nach drei"),
        (3, 58, "two minutes to four", "zwei Minuten vor vier"),
    ],
)
def test_spoken_times(hour: int, minute: int, english: str, german: str) -> None:
    assert toy.en_clock(hour, minute) == english
    assert toy.de_clock(hour, minute) == german


def test_digital_times() -> None:
    assert (toy.en_digital(7, 5), toy.de_digital(7, 5)) == ("seven oh five", "sieben Uhr fünf")
    assert (toy.en_digital(1, 30), toy.de_digital(1, 30)) == ("one thirty", "ein Uhr dreißig")


def test_dates() -> None:
    assert toy.en_date(3, 5) == "the third of May"
    assert "der " + toy.de_date(3, 5) == "der dritte Mai"
    assert toy.en_date(21, 6) == "the twenty-first of June"
    assert "am " + toy.de_date(21, 6, dative=True) == "am einundzwanzigsten Juni"
    with pytest.raises(ValueError):
        toy.en_date(30, 2)


def test_every_english_sentence_has_one_translation() -> None:
    rng = random.Random(0)
    translations: dict[str, str] = {}
    for _ in range(20_000):
        english, german = toy.sample_pair(rng)
        assert translations.setdefault(english, german) == german, english


def test_splits_have_requested_sizes_and_are_disjoint() -> None:
    splits = toy.generate(n_train=3000, n_valid=200, n_test=300, seed=3)
    assert {name: len(pairs) for name, pairs in splits.items()} == {"train": 3000, "valid": 200, "test": 300}
    sources = {name: {english for english, _ in pairs} for name, pairs in splits.items()}
    assert len(sources["train"]) == 3000
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]


def test_same_seed_same_corpus_and_stable_test_set() -> None:
    assert toy.generate(500, 50, 50, seed=9) == toy.generate(500, 50, 50, seed=9)
    assert toy.generate(500, 50, 50, seed=9) != toy.generate(500, 50, 50, seed=10)
    assert toy.generate(100, 50, 50, seed=9)["test"] == toy.generate(900, 50, 50, seed=9)["test"]


def test_sentences_are_short_and_clean() -> None:
    for pairs in toy.generate(2000, 0, 0, seed=4).values():
        for english, german in pairs:
            assert 1 <= len(english.split()) <= 15 and 1 <= len(german.split()) <= 15
            assert english == english.strip() and "\n" not in english + german


def test_command_line_writes_identical_files_for_the_same_seed(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        result = subprocess.run(
            [sys.executable, str(TOY_PATH), str(tmp_path / name), "--train", "300", "--valid", "20", "--test", "30"],
            capture_output=True, text=True, check=True,
        )
        assert len(result.stdout.strip().splitlines()) == 1
        outputs.append({path.name: path.read_bytes() for path in sorted((tmp_path / name).iterdir())})
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]) == [f"{split}.{lang}" for split in ("test", "train", "valid") for lang in ("de", "en")]
    line_counts = {name: data.decode("utf-8").count("\n") for name, data in outputs[0].items()}
    assert line_counts == {"train.en": 300, "train.de": 300, "valid.en": 20, "valid.de": 20,
                           "test.en": 30, "test.de": 30}
