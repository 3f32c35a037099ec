import pytest

from lstmmt.config import Config, parse_duration, read_yaml
from lstmmt.errors import UserError


def test_yaml_round_trip(tmp_path):
    config = Config().with_overrides(["model.hidden_size=128", "train.max_time=30m", "model.attention=bahdanau", "train.lr=2e-3"])
    config.save(tmp_path / "config.yaml")
    loaded = Config.load(tmp_path / "config.yaml")
    assert loaded == config
    assert loaded.model.hidden_size == 128 and loaded.train.lr == 2e-3 and loaded.train.max_time == "30m"


def test_overrides_are_parsed_by_field_type():
    config = Config().with_overrides(["train.lr=1", "model.input_feeding=true", "data.src_lang=123", "train.max_time=null"])
    assert isinstance(config.train.lr, float) and config.train.lr == 1.0
    assert config.model.input_feeding is True
    assert config.data.src_lang == "123"  # a str field keeps the text, not the YAML int
    assert config.train.max_time is None


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.hidden=3", "valid keys of model"),
        ("modl.hidden_size=3", "unknown config section"),
        ("model.hidden_size=big", "model.hidden_size must be int"),
        ("model.attention=cosine", "must be one of luong, dot, bahdanau"),
        ("model.hidden_size=255", "must be even"),
        ("train.max_time=soon", "cannot read duration"),
        ("hidden_size", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(UserError, match=message):
        Config().with_overrides([assignment])


def test_partial_file_merges_over_existing_config(tmp_path):
    base = Config().with_overrides(["model.hidden_size=64"])
    (tmp_path / "train.yaml").write_text("train:\n  lr: 0.005\n")
    merged = base.merged(read_yaml(tmp_path / "train.yaml"))
    assert merged.train.lr == 0.005 and merged.model.hidden_size == 64


def test_unknown_keys_in_files_are_rejected(tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  hiden_size: 10\n")
    with pytest.raises(UserError, match="model.hiden_size"):
        Config.load(tmp_path / "bad.yaml")


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(UserError):
        parse_duration("-3m")


def test_every_config_key_is_documented():
    import dataclasses
    import typing
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs/config.md").read_text(encoding="utf-8")
    for section in dataclasses.fields(Config):
        assert f"## {section.name}:" in doc
        for key in dataclasses.fields(typing.get_type_hints(Config)[section.name]):
            assert f"| `{key.name}` |" in doc, f"{section.name}.{key.name} is missing from docs/config.md"
