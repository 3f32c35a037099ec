"""Subword sampling (tokenizer.sample_alpha): sampled segmentations of train stored at preprocess
time, one read per epoch; valid, test and translation keep the usual segmentation."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmmt.batching import epoch_variant
from lstmmt.config import Config
from lstmmt.rundir import RunDir, sampled_split
from lstmmt.tokenizer import Tokenizer
from lstmmt.train import Trainer
from tests.helpers import TINY_RUN, invoke, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

SAMPLING = ["--set", "tokenizer.sample_alpha=0.3", "--set", "tokenizer.sample_variants=2"]


def preprocess(root: Path, name: str, *settings: str) -> Path:
    result = invoke("preprocess", root / name, "--src-lang", "en", "--tgt-lang", "de", "--train",
                    root / "corpus/train", "--valid", root / "corpus/valid", "--test", root / "corpus/test",
                    *TINY_RUN, *settings)
    assert result.exit_code == 0, result.output
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same toy corpus preprocessed without and with sampling."""
    root = tmp_path_factory.mktemp("sampling")
    write_corpus(root / "corpus", 300, 20, 20)
    return preprocess(root, "plain"), preprocess(root, "sampled", *SAMPLING)


def data_files(run: Path, split: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run / "data").glob(f"{split}.*"))}


def sentences(run: Path, split: str, side: str) -> list[list[int]]:
    ids = np.load(run / "data" / f"{split}.{side}.ids.npy")
    offsets = np.load(run / "data" / f"{split}.{side}.offsets.npy")
    return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_sampling_leaves_valid_test_and_the_usual_training_segmentation_unchanged(runs):
    plain, sampled = runs
    for split in ("valid", "test", "train"):
        assert data_files(sampled, split) == data_files(plain, split), split
    assert not list((plain / "data").glob("train-sampled*"))


def test_each_variant_is_another_segmentation_of_the_same_text(runs):
    _, sampled = runs
    tokenizer = Tokenizer.load(sampled / "tokenizer")
    text = (sampled / "data/train.tgt.txt").read_text(encoding="utf-8").splitlines()
    usual = sentences(sampled, "train", "tgt")
    assert tokenizer.decode_tgt(usual) == text  # data/train.tgt.txt holds the pairs kept, in order
    for k in (1, 2):
        variant = sentences(sampled, sampled_split(k), "tgt")
        assert len(variant) == len(usual) == len(text)
        assert tokenizer.decode_tgt(variant) == text  # the same sentences, pair for pair
        assert sum(a != b for a, b in zip(variant, usual)) > len(usual) // 4  # segmented differently
    assert sentences(sampled, sampled_split(1), "src") != sentences(sampled, sampled_split(2), "src")
    assert json.loads((sampled / "data/meta.json").read_text())["tokenizer"]["sampled_variants"] == 2


def test_preprocess_draws_the_same_samples_again(runs, tmp_path):
    _, sampled = runs
    again = preprocess(sampled.parent, "again", *SAMPLING)
    for k in (1, 2):
        assert data_files(again, sampled_split(k)) == data_files(sampled, sampled_split(k))


def test_every_cycle_of_epochs_reads_each_segmentation_once():
    for variants in (0, 1, 4):
        for cycle in range(3):
            chosen = [epoch_variant(variants, seed=5, epoch=cycle * (variants + 1) + i) for i in range(variants + 1)]
            assert sorted(chosen) == list(range(variants + 1))
    orders = {tuple(epoch_variant(4, seed, e) for e in range(5)) for seed in range(6)}
    assert len(orders) > 1  # the order depends on the seed
    assert [epoch_variant(4, 3, e) for e in range(10)] == [epoch_variant(4, 3, e) for e in range(10)]


def test_training_reads_one_segmentation_per_epoch(runs):
    _, sampled = runs
    run = RunDir(sampled)
    config = Config.load(run.config)
    trainer = Trainer(run, replace(config, train=replace(config.train, max_epochs=3)), torch.device("cpu"))
    per_epoch: dict[int, int] = {}
    for batch, _, (epoch, _) in trainer.batches():  # accumulate 1: every batch ends a step and says where
        per_epoch[epoch] = per_epoch.get(epoch, 0) + batch.tgt_tokens
    expected = sorted(sum(len(s) + 1 for s in sentences(sampled, split, "tgt"))
                      for split in ("train", sampled_split(1), sampled_split(2)))
    assert sorted(per_epoch.values()) == expected


def test_a_child_may_sample_its_own_way_with_its_parent_s_tokenizer(runs):
    plain, sampled = runs
    child = sampled.parent / "child"
    result = invoke("preprocess", child, "--src-lang", "en", "--tgt-lang", "de", "--train",
                    sampled.parent / "corpus/valid", "--tokenizer-from", plain, *SAMPLING)
    assert result.exit_code == 0, result.output
    assert (child / "data" / f"{sampled_split(2)}.src.ids.npy").exists()
