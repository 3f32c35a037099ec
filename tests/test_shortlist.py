"""Vocabulary shortlists: counts and candidates on a hand-made corpus, and search over them."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstmmt import Translator, decoding, shortlist as shortlists
from lstmmt.cli import app
from lstmmt.config import DecodeConfig
from lstmmt.decoding import Ensemble, Restricted
from lstmmt.encoded import EncodedSide, write_side
from lstmmt.errors import UserError
from lstmmt.rundir import RunDir
from lstmmt.shortlist import SPECIALS, Shortlist
from lstmmt.tokenizer import EOS, PAD
from tests.helpers import TOY_LINES

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

# Four sentence pairs over a 10-piece vocabulary. c(s): 4 in 3 pairs, 5 in 2, 8 in 1.
# c(t): 6 in 3, 7 in 2, 9 in 1. c(4,6)=3 c(4,7)=1 c(4,9)=1 c(5,6)=1 c(5,7)=2 c(8,6)=1 c(8,9)=1.
# Dice 2c(s,t)/(c(s)+c(t)): 4 -> 6 (1.0), 9 (0.5), 7 (0.4); 5 -> 7 (1.0), 6 (0.4); 8 -> 9 (1.0), 6 (0.5).
# p(t|s) would tie 7 and 9 for source 4; Dice prefers 9, which occurs nowhere else.
SRC = [[4, 5], [4, 8], [4], [5]]
TGT = [[6, 7], [6, 9], [6], [7, 7]]
VOCAB = 10


@pytest.fixture()
def corpus(tmp_path) -> tuple[EncodedSide, EncodedSide]:
    run = RunDir(tmp_path / "run")
    write_side(run, "train", "src", SRC)
    write_side(run, "train", "tgt", TGT)
    return EncodedSide.open(run, "train", "src"), EncodedSide.open(run, "train", "tgt")


@pytest.mark.parametrize("block, reduce", [(4096, 1 << 24), (1, 1)])  # one pass; a merge after every pair
def test_candidates_are_the_best_targets_by_dice(corpus, monkeypatch, block, reduce):
    monkeypatch.setattr(shortlists, "BLOCK_SENTENCES", block)
    monkeypatch.setattr(shortlists, "REDUCE_PAIRS", reduce)
    counts = shortlists.count_pairs(*corpus, VOCAB, VOCAB)
    assert counts.src_pairs[[4, 5, 8]].tolist() == [3, 2, 1] and counts.tgt_pairs[[6, 7, 9]].tolist() == [3, 2, 1]
    assert counts.tgt_tokens[[6, 7, 9]].tolist() == [3, 3, 1]
    table = counts.candidates(2)
    assert table.dtype == np.int32 and table.shape == (VOCAB, 2)
    assert table[4].tolist() == [6, 9] and table[5].tolist() == [7, 6] and table[8].tolist() == [9, 6]
    assert (np.delete(table, [4, 5, 8], axis=0) == -1).all()
    assert counts.candidates(4)[5].tolist() == [7, 6, -1, -1]
    assert counts.always(1).tolist() == [0, 1, 2, 3, 6]  # 6 and 7 both occur 3 times: the smaller id


def test_allowed_ids_are_the_batch_union_with_the_specials_first():
    candidates = np.full((VOCAB, 2), -1, dtype=np.int32)
    candidates[4], candidates[5] = [6, 9], [7, -1]
    short = Shortlist(candidates, np.r_[SPECIALS, 8].astype(np.int32), {})
    assert short.allowed(torch.tensor([[4, EOS, PAD]])).tolist() == [0, 1, 2, 3, 6, 8, 9]
    assert short.allowed(torch.tensor([[4, 5, EOS], [5, EOS, PAD]])).tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    assert short.allowed(torch.tensor([[5, EOS]])).dtype == torch.long


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run (this module writes shortlist.npz into it), with a best and a last checkpoint."""
    copy = tmp_path_factory.mktemp("shortlist") / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_the_command_writes_the_file_and_translate_reads_it(run, tmp_path):
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in TOY_LINES), encoding="utf-8")
    missing = runner.invoke(app, ["translate", str(run), "-i", str(tmp_path / "in.txt"), "--shortlist"])
    assert missing.exit_code == 1
    assert f"{run}/shortlist.npz does not exist: run `lstmmt shortlist {run}` first" in " ".join(missing.output.split())
    with pytest.raises(UserError, match="lstmmt shortlist"):
        Translator.load(run, device="cpu", shortlist=True)

    result = runner.invoke(app, ["shortlist", str(run), "--per-source", "3", "--frequent", "5"])
    assert result.exit_code == 0, result.output
    wrote = f"Wrote {run}/shortlist.npz: 3 candidates per source piece, 5 frequent target pieces"
    assert wrote in " ".join(result.output.split())
    with np.load(run / "shortlist.npz", allow_pickle=False) as data:  # readable without lstmmt
        assert data["candidates"].shape == (100, 3) and len(data["always"]) == len(SPECIALS) + 5
    arguments = ["translate", str(run), "-i", str(tmp_path / "in.txt"), "--shortlist", "--beam", "2"]
    translated = runner.invoke(app, arguments)
    assert translated.exit_code == 0, translated.output
    assert "over the shortlist" in translated.output
    assert Translator.load(run, device="cpu", shortlist=True).shortlist.meta["per_source"] == 3


def everything(vocab: int) -> Shortlist:
    """A shortlist that allows every target id."""
    return Shortlist(np.full((vocab, 1), -1, dtype=np.int32), np.arange(vocab, dtype=np.int32), {})


@pytest.mark.parametrize("beam, checkpoints", [(1, ["best"]), (3, ["best"]), (3, ["best", "last"])])
def test_a_shortlist_of_every_id_translates_as_the_full_vocabulary(run, beam, checkpoints):
    full = Translator.load(run, checkpoints, device="cpu", beam_size=beam, n_best=min(2, beam))
    narrowed = Translator(full.models, full.tokenizer, full.decode, full.device, full.precision,
                          shortlist=everything(full.tokenizer.tgt_vocab_size))
    expected, found = full.translate(TOY_LINES), narrowed.translate(TOY_LINES)
    assert [t.text for t in found] == [t.text for t in expected] and any(t.text for t in found)
    for a, b in zip(expected, found):
        assert [c.text for c in a.n_best] == [c.text for c in b.n_best]
        assert np.allclose([c.log_prob for c in a.n_best], [c.log_prob for c in b.n_best], atol=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_a_restricted_shortlist_produces_only_allowed_ids(run, beam):
    base = Translator.load(run, device="cpu", beam_size=beam)
    vocab = base.tokenizer.tgt_vocab_size
    encoded = base.tokenizer.encode_src([line for line in TOY_LINES if line.strip()])
    sentences = [np.asarray(ids, dtype=np.int32) for ids in encoded]
    unrestricted = {t for hyps in base.search(sentences) for t in hyps[0].tokens}
    # Candidates only: every source piece allows 20 and 21, nothing else is (the specials aside).
    via_candidates = Shortlist(np.tile(np.array([20, 21], dtype=np.int32), (vocab, 1)), SPECIALS.copy(), {})
    # The always-allowed list only, without the ids the full search liked.
    allowed = [i for i in range(10, 40) if i not in unrestricted][:8]
    via_always = Shortlist(np.full((vocab, 1), -1, dtype=np.int32), np.r_[SPECIALS, allowed].astype(np.int32), {})
    for short, ids in ((via_candidates, {20, 21}), (via_always, set(allowed))):
        narrowed = Translator(base.models, base.tokenizer, base.decode, base.device, base.precision, shortlist=short)
        produced = {t for hyps in narrowed.search(sentences) for t in hyps[0].tokens}
        assert produced and produced <= ids | {PAD, 1, 2}  # the specials (PAD, UNK, BOS) are always allowed


def test_restricted_step_models_and_ensembles_score_the_subset(run):
    model = Translator.load(run, device="cpu").models[0]
    ids = torch.tensor([0, 1, 2, 3, 7, 11, 30])
    src, lengths = torch.tensor([[5, 6, EOS]]), torch.tensor([3])
    with torch.inference_mode():
        memory, state = model.encode(src, lengths)
        full, _ = model.decode_step(torch.tensor([11]), memory, state)
        narrowed, _ = Restricted(model, ids).decode_step(torch.tensor([5]), memory, state)  # position 5 is id 11
        pair = Ensemble([Restricted(model, ids), Restricted(model, ids)])
        pair_log_probs, _ = pair.decode_step(torch.tensor([5]), *pair.encode(src, lengths))
    assert narrowed.shape == (1, 7) and torch.allclose(narrowed.exp().sum(), torch.tensor(1.0))
    renormalised = full[:, ids] - torch.logsumexp(full[:, ids], dim=-1, keepdim=True)
    assert torch.allclose(narrowed, renormalised, atol=1e-5) and torch.allclose(pair_log_probs, narrowed, atol=1e-6)


def test_a_shortlist_of_another_tokenizer_is_refused(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert runner.invoke(app, ["shortlist", str(other)]).exit_code == 0
    Translator.load(other, device="cpu", shortlist=True)
    shutil.copy(other / "shortlist.npz", tmp_path / "kept.npz")
    with np.load(tmp_path / "kept.npz", allow_pickle=False) as data:
        arrays = dict(data)
    arrays["meta"] = np.array(str(arrays["meta"]).replace('"tokenizer_sha256": "', '"tokenizer_sha256": "0'))
    np.savez(other / "shortlist.npz", **arrays)
    with pytest.raises(UserError, match="built for another tokenizer"):
        Translator.load(other, device="cpu", shortlist=True)
    for damaged in (b"not a zip", (tmp_path / "kept.npz").read_bytes()[:100]):  # garbage, a truncated file
        (other / "shortlist.npz").write_bytes(damaged)
        with pytest.raises(UserError, match="is damaged"):
            Translator.load(other, device="cpu", shortlist=True)


def test_a_shortlist_of_specials_alone_is_refused(run):
    """With no candidates and no frequent pieces search could produce only UNK: every output would be ⁇."""
    result = runner.invoke(app, ["shortlist", str(run), "--per-source", "0", "--frequent", "0"])
    assert result.exit_code == 1, result.output
    assert "--per-source and --frequent are both 0" in " ".join(result.output.split())
    with pytest.raises(UserError, match="at least one of them a value > 0"):
        shortlists.build(RunDir(run), 0, 0)
    assert len(shortlists.build(RunDir(run), 0, 1).always) == len(SPECIALS) + 1


@pytest.mark.parametrize(("beam", "batch_tokens", "shortlisted", "largest"), [
    (1, None, True, 1600),  # the default capped: a batch's shortlist is the union over its sentences
    (1, None, False, 8000),
    (5, None, True, 1600),  # 8,000 / 5: the cap changes nothing
    (5, None, False, 1600),
    (1, 4000, True, 4000),  # an explicit budget is the user's
])
def test_shortlisted_cpu_search_batches_are_capped_by_default(monkeypatch, beam, batch_tokens, shortlisted, largest):
    sizes: list[int] = []

    def record(model, src, src_lengths, decode, shortlist=None):
        sizes.append(src.numel())
        return [[] for _ in range(src.shape[0])]

    monkeypatch.setattr(decoding, "search_batch", record)
    sentences = [np.full(9, 4, dtype=np.int64) for _ in range(3000)]  # 10 padded tokens each
    decode = DecodeConfig(beam_size=beam, batch_tokens=batch_tokens)
    shortlist = Shortlist(np.zeros((VOCAB, 1), dtype=np.int32), np.array(SPECIALS, dtype=np.int32), {})
    decoding.search_corpus(None, sentences, decode, torch.device("cpu"), "fp32", shortlist if shortlisted else None)
    assert sum(sizes) == 30_000 and max(sizes) == largest  # source tokens, EOS included
