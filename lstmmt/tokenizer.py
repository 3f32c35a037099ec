"""SentencePiece training and encode/decode, with fixed special ids.

The ids of pad, unk, bos and eos are the same in every model, so batching, the model and
search use the constants below instead of asking the tokenizer. A joint model (one
vocabulary for both languages) is what allows tying source and target embeddings.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from lstmmt.config import TokenizerConfig
from lstmmt.errors import UserError, first_line

PAD, UNK, BOS, EOS = 0, 1, 2, 3

_MODEL_NAMES = {"spm": "joint", "src": "source", "tgt": "target"}
"""File stem of each model train_tokenizer may write, and the text it learns from."""


def train_tokenizer(src_lines: Iterable[str], tgt_lines: Iterable[str], config: TokenizerConfig, out_dir: Path) -> None:
    """Train out_dir/spm.model on both sides (joint), or out_dir/src.model and tgt.model (each with a .vocab)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.joint:
        _train_model(itertools.chain(src_lines, tgt_lines), config, out_dir, "spm")
    else:
        _train_model(src_lines, config, out_dir, "src")
        _train_model(tgt_lines, config, out_dir, "tgt")


def model_files(directory: Path) -> list[Path]:
    """Every file train_tokenizer may write in `directory` (so a redone preprocess can remove them)."""
    return [Path(directory) / f"{name}{suffix}" for name in _MODEL_NAMES for suffix in (".model", ".vocab")]


def copy_tokenizer(source: Path, target: Path) -> None:
    """Copy the SentencePiece files of `source` (a run's or a release's tokenizer/) into `target`,
    byte for byte, each .model last (Tokenizer.load looks for it)."""
    files = [path for path in model_files(source) if path.exists()]
    if not any(path.suffix == ".model" for path in files):
        raise UserError(f"{source} holds no SentencePiece model (spm.model, or src.model and tgt.model)")
    Path(target).mkdir(parents=True, exist_ok=True)
    for path in sorted(files, key=lambda path: path.suffix == ".model"):
        shutil.copyfile(path, Path(target) / path.name)


def _train_model(lines: Iterable[str], config: TokenizerConfig, out_dir: Path, name: str) -> None:
    """Train one model in a temporary folder, then move it under its final name.

    The .model file is moved last: Tokenizer.load looks for it, so a crash never leaves a
    half-written model where a finished one is expected.
    """
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}.") as tmp:
        prefix = Path(tmp) / name
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_prefix=str(prefix), **_trainer_options(config)
            )
        except RuntimeError as exc:
            error = _vocab_size_error(str(exc), config.vocab_size, _MODEL_NAMES[name])
            if error is None:
                raise
            raise error from None
        for suffix in (".vocab", ".model"):
            os.replace(prefix.with_suffix(suffix), out_dir / f"{name}{suffix}")


def _trainer_options(config: TokenizerConfig) -> dict[str, object]:
    if 0 < config.input_sentence_size <= 100:
        raise UserError("tokenizer.input_sentence_size must be 0 (use every sentence) or more than 100")
    return {
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "character_coverage": config.character_coverage,
        "input_sentence_size": config.input_sentence_size,
        "shuffle_input_sentence": True,  # sample across the whole corpus, not its first lines
        "pad_id": PAD,
        "unk_id": UNK,
        "bos_id": BOS,
        "eos_id": EOS,
        "minloglevel": 2,  # errors come back as exceptions; info and warnings would clutter stderr
    }


def _vocab_size_error(message: str, requested: int, text: str) -> UserError | None:
    """A UserError for SentencePiece's vocabulary-size failures, with the size it would accept."""
    too_large = re.search(r"Please set it to a value <= (\d+)", message)
    if too_large:
        limit = too_large.group(1)
        return UserError(
            f"tokenizer.vocab_size={requested} is too large for the {text} training text, which yields at most "
            f"{limit} pieces: use --set tokenizer.vocab_size={limit} (or less), or more training data"
        )
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        needed = too_small.group(1)
        return UserError(
            f"tokenizer.vocab_size={requested} is too small for the characters of the {text} training text: "
            f"use --set tokenizer.vocab_size={needed} (or more), or lower tokenizer.character_coverage"
        )
    return None


@dataclass(frozen=True)
class Sampling:
    """How to draw a segmentation (tokenizer.sample_alpha) and the seed of this draw."""

    alpha: float
    seed: int


class Tokenizer:
    """Encode source text and encode/decode target text with the run's SentencePiece model(s)."""

    def __init__(self, src: spm.SentencePieceProcessor, tgt: spm.SentencePieceProcessor, joint: bool) -> None:
        self._src = src
        self._tgt = tgt
        self.joint = joint
        self.src_vocab_size: int = src.get_piece_size()
        self.tgt_vocab_size: int = tgt.get_piece_size()

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        """The tokenizer that preprocess trained into `directory` (joint or separate)."""
        directory = Path(directory)
        if (directory / "spm.model").is_file():
            joint = _processor(directory / "spm.model")
            return cls(joint, joint, joint=True)
        if (directory / "src.model").is_file() and (directory / "tgt.model").is_file():
            return cls(_processor(directory / "src.model"), _processor(directory / "tgt.model"), joint=False)
        raise UserError(
            f"no tokenizer in {directory} (expected spm.model, or src.model and tgt.model): "
            "run `lstmmt preprocess` first"
        )

    def encode_src(self, lines: list[str], sample: Sampling | None = None) -> list[list[int]]:
        """Piece ids of each source line, without bos/eos; a sampled segmentation with `sample`."""
        return _encode(self._src, lines, sample)

    def encode_tgt(self, lines: list[str], sample: Sampling | None = None) -> list[list[int]]:
        """Piece ids of each target line, without bos/eos; a sampled segmentation with `sample`."""
        return _encode(self._tgt, lines, sample)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Detokenized target text; pad, bos and eos are control symbols that SentencePiece drops."""
        if not ids:
            return []  # SentencePiece reads an empty batch as one empty sentence
        return self._tgt.decode(ids)

    def src_pieces(self, ids: list[int]) -> list[str]:
        """The source pieces of ids (for attention labels and word alignments)."""
        return [self._src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        """The target pieces of ids."""
        return [self._tgt.id_to_piece(i) for i in ids]


def _encode(processor: spm.SentencePieceProcessor, lines: list[str], sample: Sampling | None) -> list[list[int]]:
    """The usual segmentation, or one drawn from all segmentations (nbest_size -1) with
    `sample.alpha` smoothing. SentencePiece restarts its generator from one process-wide seed at
    every call, so each call gets its own seed; one thread, as the order in which threads draw
    would change the result."""
    if sample is None:
        return processor.encode(lines)
    spm.set_random_generator_seed(sample.seed)
    return processor.encode(lines, enable_sampling=True, alpha=sample.alpha, nbest_size=-1, num_threads=1)


def _processor(path: Path) -> spm.SentencePieceProcessor:
    """A SentencePiece model file; a damaged one (e.g. "could not parse ModelProto") is a UserError."""
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        run = Path(path).parent.parent
        raise UserError(f"{path} is not a readable SentencePiece model (corrupt or truncated: {first_line(exc)}): "
                        f"redo `lstmmt preprocess {run} ... --force`") from None
