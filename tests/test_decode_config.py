"""DecodeConfig: one place for every search setting and its range; old runs still load."""

import math
import re
import shutil

import pytest
import torch
import yaml

from lstmmt import Translator
from lstmmt.config import Config, DecodeConfig
from lstmmt.errors import UserError
from lstmmt.tokenizer import EOS


@pytest.mark.parametrize("values, message", [
    ({"beam_size": 0}, "decode.beam_size must be an integer in [1, 1000]"),
    ({"beam_size": -2}, "decode.beam_size must be an integer in [1, 1000]"),
    ({"beam_size": 1001}, "decode.beam_size must be an integer in [1, 1000]"),
    ({"n_best": 6}, "decode.n_best must be an integer in [1, decode.beam_size (5)], got 6"),
    ({"n_best": 0}, "decode.n_best must be an integer in [1, 1000] (at most beam_size in beam search), got 0"),
    ({"beam_size": 2, "n_best": 3}, "decode.n_best must be an integer in [1, decode.beam_size (2)], got 3"),
    ({"length_penalty": math.nan}, "decode.length_penalty must be a number in [-10, 10], got nan"),
    ({"length_penalty": 1e308}, "decode.length_penalty must be a number in [-10, 10], got 1e+308"),
    ({"length_penalty": -1e308}, "decode.length_penalty must be a number in [-10, 10], got -1e+308"),
    ({"max_len_a": 1e300}, "decode.max_len_a must be a number in [0, 100], got 1e+300"),
    ({"max_len_a": 10**5000}, "decode.max_len_a must be a number, got an integer of 16610 bits"),
    ({"max_len_b": 10**18}, "decode.max_len_b must be an integer in [0, 10000]"),
    ({"length_penalty": "x" * 5000}, f"decode.length_penalty must be a number, got '{'x' * 27}...{'x' * 28}'"),
    ({"batch_tokens": 0}, "decode.batch_tokens must be an integer >= 1"),
    ({"max_source_tokens": 0}, "decode.max_source_tokens must be an integer >= 1"),
    ({"workers": 0}, "decode.workers must be an integer in [1, 1024]"),
    ({"beam_size": 2.5}, "decode.beam_size must be int"),
    ({"beam": 3}, "unknown decode setting(s) beam"),
])
def test_updated_checks_type_and_range(values, message):
    with pytest.raises(UserError, match=re.escape(message)):
        DecodeConfig().updated(**values)


@pytest.mark.parametrize("length_penalty", [-10.0, 10.0])
@pytest.mark.parametrize("beam_size, max_len_a, max_len_b", [(1, 100.0, 10_000), (3, 0.0, 20)])
def test_search_works_at_the_bounds(length_penalty, beam_size, max_len_a, max_len_b):
    """The extreme values the checks allow: search runs to the longest output they allow
    (greedy: 100 x 3 + 10,000 tokens) and scores it with a finite number."""
    from lstmmt.search import search
    from tests.helpers import VOCAB, Rows

    class Endless:
        """Never ends a sentence before the length limit: EOS is always the least likely token."""

        def encode(self, src, src_lengths):
            return Rows(torch.arange(src.size(0))), Rows(torch.arange(src.size(0)))

        def decode_step(self, prev, memory, state):
            log_probs = torch.full((prev.size(0), VOCAB), math.log(0.2))
            log_probs[:, EOS] = -30.0
            return log_probs, state

    options = DecodeConfig().updated(beam_size=beam_size, length_penalty=length_penalty, max_len_a=max_len_a,
                                     max_len_b=max_len_b)
    best = search(Endless(), torch.tensor([[4, 5, EOS]]), torch.tensor([3]), options)[0][0]
    assert len(best.tokens) + 1 == int(max_len_a * 3 + max_len_b)  # + EOS
    assert math.isfinite(best.score) and best.score < 0


def test_the_same_checks_guard_config_files():
    with pytest.raises(UserError, match="decode.beam_size"):
        Config().with_overrides(["decode.beam_size=0"])
    with pytest.raises(UserError, match="decode.length_penalty"):
        Config().with_overrides(["decode.length_penalty=nan"])
    with pytest.raises(UserError, match=r"decode.max_len_a must be a number in \[0, 100\], got inf"):
        Config().with_overrides(["decode.max_len_a=1e400"])


def test_model_max_source_tokens_of_old_runs_moves_to_decode():
    old = Config().to_dict()
    del old["decode"]["max_source_tokens"]
    old["model"]["max_source_tokens"] = 120
    assert Config.from_dict(old).decode.max_source_tokens == 120
    assert Config().merged({"model": {"max_source_tokens": 90}}).decode.max_source_tokens == 90


def test_an_old_run_directory_loads(tiny_run, tmp_path):
    """config.yaml (and checkpoints, whose config goes through the same Config.from_dict) written
    when max_source_tokens was a model key still load, with the value in its new place."""
    run = tmp_path / "old"
    for part in ("config.yaml", "tokenizer", "data", "checkpoints"):
        source = tiny_run / part
        (run / part).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, run / part)
        else:
            (run / part).write_bytes(source.read_bytes())
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["model"]["max_source_tokens"] = raw["decode"].pop("max_source_tokens") - 240
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert Translator.load(run, device="cpu").decode.max_source_tokens == 10
