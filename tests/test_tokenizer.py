"""SentencePiece training (joint and separate, unigram and bpe), its errors, and encode/decode."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from lstmmt.config import TokenizerConfig
from lstmmt.errors import UserError
from lstmmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, train_tokenizer

LEXICON = {
    "the": "der", "cat": "katze", "dog": "hund", "sees": "sieht", "a": "ein", "house": "haus",
    "small": "kleine", "big": "grosse", "runs": "rennt", "home": "heim", "river": "fluss", "tree": "baum",
    "bird": "vogel", "sings": "singt", "today": "heute", "and": "und", "green": "gruene", "old": "alte",
    "water": "wasser", "bread": "brot", "eats": "isst", "child": "kind", "mother": "mutter", "quickly": "schnell",
    "book": "buch", "reads": "liest", "night": "nacht", "morning": "morgen", "city": "stadt", "walks": "geht",
    "through": "durch", "with": "mit", "friend": "freund", "yellow": "gelbe", "window": "fenster", "opens": "oeffnet",
}  # fmt: skip
VOCAB = 50


def corpus(n: int = 300, seed: int = 0) -> tuple[list[str], list[str]]:
    """n random word-for-word sentence pairs: enough text for a vocabulary of VOCAB per side."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = rng.choices(list(LEXICON), k=rng.randint(3, 9))
        src.append(" ".join(words))
        tgt.append(" ".join(LEXICON[w] for w in words))
    return src, tgt


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("joint", [True, False])
def test_train_load_and_round_trip(tmp_path: Path, model_type: str, joint: bool) -> None:
    src, tgt = corpus()
    config = TokenizerConfig(vocab_size=VOCAB, model_type=model_type, joint=joint)
    train_tokenizer(src, tgt, config, tmp_path)
    names = {"spm.model", "spm.vocab"} if joint else {"src.model", "src.vocab", "tgt.model", "tgt.vocab"}
    assert {p.name for p in tmp_path.iterdir()} == names  # and no temporary folder left behind
    tokenizer = Tokenizer.load(tmp_path)
    assert tokenizer.joint is joint
    assert (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size) == (VOCAB, VOCAB)
    sample = tgt[:20] + ["der hund sieht heute einen baum"]
    assert tokenizer.decode_tgt(tokenizer.encode_tgt(sample)) == sample
    src_ids = tokenizer.encode_src(src[:20])
    assert len(src_ids) == 20
    assert all(ids and max(ids) < VOCAB and not {PAD, BOS, EOS} & set(ids) for ids in src_ids)


@pytest.mark.parametrize("joint", [True, False])
def test_separate_models_learn_only_their_own_side(tmp_path: Path, joint: bool) -> None:
    src, tgt = corpus()
    train_tokenizer(src, tgt, TokenizerConfig(vocab_size=VOCAB, joint=joint), tmp_path)
    tokenizer = Tokenizer.load(tmp_path)
    # "z" occurs only in the target language, so only a source-only model lacks it.
    assert UNK not in tokenizer.encode_tgt(["katze"])[0]
    assert (UNK in tokenizer.encode_src(["katze"])[0]) is not joint


def test_decode_ignores_special_ids_and_handles_empty_batches(tmp_path: Path) -> None:
    src, tgt = corpus()
    train_tokenizer(src, tgt, TokenizerConfig(vocab_size=VOCAB), tmp_path)
    tokenizer = Tokenizer.load(tmp_path)
    ids = tokenizer.encode_tgt(["der hund rennt"])[0]
    assert tokenizer.decode_tgt([[BOS, *ids, EOS, PAD, PAD], []]) == ["der hund rennt", ""]
    assert tokenizer.decode_tgt([]) == []
    assert tokenizer.encode_src([]) == []


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_vocab_too_large_suggests_a_size_that_works(tmp_path: Path, model_type: str) -> None:
    src, tgt = corpus(100)
    with pytest.raises(UserError, match="tokenizer.vocab_size=5000 is too large") as error:
        train_tokenizer(src, tgt, TokenizerConfig(vocab_size=5000, model_type=model_type), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half model under the final name, no temporary folder
    suggested = int(re.search(r"--set tokenizer.vocab_size=(\d+)", str(error.value)).group(1))
    train_tokenizer(src, tgt, TokenizerConfig(vocab_size=suggested, model_type=model_type), tmp_path)
    assert Tokenizer.load(tmp_path).src_vocab_size == suggested


def test_vocab_too_small_for_the_characters(tmp_path: Path) -> None:
    src, tgt = corpus(100)
    with pytest.raises(UserError, match=r"vocab_size=10 is too small .* tokenizer.vocab_size=\d+ \(or more\)"):
        train_tokenizer(src, tgt, TokenizerConfig(vocab_size=10), tmp_path)


def test_separate_training_names_the_side_that_failed(tmp_path: Path) -> None:
    src, _ = corpus()
    with pytest.raises(UserError, match="too large for the target training text"):
        train_tokenizer(src, ["kurz"] * 50, TokenizerConfig(vocab_size=VOCAB, joint=False), tmp_path)


def test_training_is_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    src, tgt = corpus()
    very_long = " ".join(["the cat sees a dog"] * 1000)  # SentencePiece warns about lines this long
    train_tokenizer(src + [very_long], tgt + ["kurz"], TokenizerConfig(vocab_size=VOCAB), tmp_path)
    assert capfd.readouterr() == ("", "")


def test_tiny_input_sentence_size_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="input_sentence_size must be 0"):
        train_tokenizer(*corpus(), TokenizerConfig(vocab_size=VOCAB, input_sentence_size=50), tmp_path)


def test_load_without_a_tokenizer_names_preprocess(tmp_path: Path) -> None:
    (tmp_path / "src.model").write_bytes(b"")  # half of a separate pair is not a tokenizer
    with pytest.raises(UserError, match="run `lstmmt preprocess` first"):
        Tokenizer.load(tmp_path)
