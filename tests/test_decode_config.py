"""DecodeConfig: one place for every search setting and its range; old runs still load."""

import math
import shutil

import pytest
import yaml

from lstmmt import Translator
from lstmmt.config import Config, DecodeConfig
from lstmmt.errors import UserError


@pytest.mark.parametrize("values, message", [
    ({"beam_size": 0}, "decode.beam_size must be an integer >= 1"),
    ({"beam_size": -2}, "decode.beam_size must be an integer >= 1"),
    ({"n_best": 6}, "decode.n_best must be between 1 and decode.beam_size (5), got 6"),
    ({"length_penalty": math.nan}, "decode.length_penalty must be a finite number"),
    ({"batch_tokens": 0}, "decode.batch_tokens must be an integer >= 1"),
    ({"max_source_tokens": 0}, "decode.max_source_tokens must be an integer >= 1"),
    ({"workers": 0}, "decode.workers must be an integer >= 1"),
    ({"beam_size": 2.5}, "decode.beam_size must be int"),
    ({"beam": 3}, "unknown decode setting(s) beam"),
])
def test_updated_checks_type_and_range(values, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecodeConfig().updated(**values)


def test_the_same_checks_guard_config_files():
    with pytest.raises(UserError, match="decode.beam_size"):
        Config().with_overrides(["decode.beam_size=0"])
    with pytest.raises(UserError, match="decode.length_penalty"):
        Config().with_overrides(["decode.length_penalty=nan"])


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
