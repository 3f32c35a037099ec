import dataclasses
import re
import typing

import pytest
import yaml

from lstmmt.config import Config, TrainConfig, allowed_text, default_text, option_help, parse_duration, read_yaml
from lstmmt.errors import UserError


def test_yaml_round_trip(tmp_path):
    config = Config().with_overrides(["model.hidden_size=128", "train.max_time=30m", "model.attention=bahdanau",
                                      "train.lr=2e-3"])
    config.save(tmp_path / "config.yaml")
    loaded = Config.load(tmp_path / "config.yaml")
    assert loaded == config
    assert loaded.model.hidden_size == 128 and loaded.train.lr == 2e-3 and loaded.train.max_time == "30m"


def test_overrides_are_parsed_by_field_type():
    config = Config().with_overrides(["train.lr=1", "model.input_feeding=true", "data.src_lang=123",
                                      "train.max_time=null"])
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


def test_docs_tables_are_generated_from_the_declarations():
    """docs/config.md's tables are what `python -m lstmmt.configdoc` writes from lstmmt/config.py."""
    from lstmmt.configdoc import DOC, rendered

    doc = DOC.read_text(encoding="utf-8")
    assert rendered(doc) == doc, "docs/config.md is stale: run python -m lstmmt.configdoc"
    for section in dataclasses.fields(Config):
        assert f"<!-- generated table: {section.name} -->" in doc


def test_a_changed_declaration_makes_the_docs_stale(monkeypatch):
    from lstmmt.config import TrainConfig
    from lstmmt.configdoc import DOC, rendered, table

    item = next(item for item in dataclasses.fields(TrainConfig) if item.name == "max_epochs")
    monkeypatch.setattr(item, "default", 7)
    doc = DOC.read_text(encoding="utf-8")
    assert "| `max_epochs` | int | 7 | >= 1 |" in table("train") and rendered(doc) != doc


def test_every_key_is_declared_with_help_and_every_number_with_a_range():
    """The range check covers a numeric key only through its declaration, so each must have one."""
    for section, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            key, allowed = f"{section}.{item.name}", item.metadata["allowed"]
            assert item.metadata["help"], f"{key} has no help"
            if {int, float} & {hints[item.name], *typing.get_args(hints[item.name])}:
                assert allowed.low is not None or allowed.high is not None, f"{key} has no range"


def test_command_line_help_quotes_each_keys_declared_range_and_default():
    """Options that set a config key name it, with the range and default its field declares."""
    import typer

    from lstmmt.cli import app

    named = 0
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            match = re.search(r"\((\w+\.\w+): ", getattr(param, "help", None) or "")
            if match:
                key, named = match[1], named + 1
                assert f"({key}: {allowed_text(key)}; default {default_text(key)})." in param.help, param.help
    assert named >= 10
    beam_help = option_help("decode.beam_size", "Beam size")
    assert "(decode.beam_size: in [1, 1000] (1 is greedy search); default 5)." in beam_help


def test_durations_are_parsed_once_when_the_config_is_built(monkeypatch):
    """The budget schedule reads the seconds every step: parsing them again would cost each step."""
    import lstmmt.config
    import lstmmt.schedule
    from lstmmt.schedule import budget_spent, learning_rate

    config = Config().with_overrides(["train.max_time=30m", "train.valid_every_time=1.5h", "train.lr_schedule=budget",
                                      "train.decay_share=1.0"])
    assert (config.train.max_time_seconds, config.train.valid_every_seconds) == (1800.0, 5400.0)
    assert Config().train.max_time_seconds == float("inf") and Config().train.valid_every_seconds == 300.0
    steps_only = Config().with_overrides(["train.max_steps=100000"]).train

    def refuse(text):
        raise AssertionError(f"{text!r} parsed again")

    monkeypatch.setattr(lstmmt.config, "parse_duration", refuse)
    monkeypatch.setattr(lstmmt.schedule, "parse_duration", refuse, raising=False)
    rates = [learning_rate(config.train, step, elapsed=step * 2.0) for step in range(100)]
    assert rates[-1] < rates[50] and budget_spent(config.train, 300, 900.0) == 0.5
    assert budget_spent(steps_only, 10, 1e9) == 10 / 100_000  # no max_time: steps alone


def test_parsed_durations_stay_out_of_config_yaml(tmp_path):
    config = Config().with_overrides(["train.max_time=30m"])
    assert config.train.max_time_seconds == 1800.0
    config.save(tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["max_time"] == "30m"
    assert list(saved["train"]) == [item.name for item in dataclasses.fields(TrainConfig)]
    assert Config.load(tmp_path / "config.yaml") == config


def one_line_error(action, *words: str) -> str:
    """The UserError message `action()` raises, checked to be one short line naming each of `words`."""
    with pytest.raises(UserError) as raised:
        action()
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message
    for word in words:
        assert word in message, message
    return message


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine levels of ten aliases each: a billion nodes (and a message holding them) if expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]" for level in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    one_line_error(lambda: Config.load(tmp_path / "bomb.yaml"), "bomb.yaml", "aliases (*name) are not allowed",
                   "line 2")
    one_line_error(lambda: Config().with_overrides(["model.hidden_size=[&a [1, 1], *a, *a]"]),
                   "model.hidden_size must be int")


@pytest.mark.parametrize("text, where", [
    ("model:\n  1: 3\n", "section model"),
    ("model:\n  null: 3\n  hidden_size: 64\n", "section model"),
    ("1: 3\n", "config keys must be text, got 1 in"),
])
def test_keys_must_be_names(tmp_path, text, where):
    (tmp_path / "keys.yaml").write_text(text)
    one_line_error(lambda: Config.load(tmp_path / "keys.yaml"), "config keys must be text", where)
    one_line_error(lambda: Config().merged(read_yaml(tmp_path / "keys.yaml")), "config keys must be text")
    one_line_error(lambda: Config.from_dict({"model": {None: 3}}), "config keys must be text, got None in model")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("data:\n  src_lang: café\n".encode("latin-1"))
    one_line_error(lambda: Config.load(tmp_path / "latin1.yaml"), "latin1.yaml is not UTF-8 text", "save it as UTF-8")


def test_a_file_too_large_for_a_config_is_refused_unread(tmp_path):
    (tmp_path / "huge.yaml").write_text("model:\n  attention: " + "x" * (1 << 20) + "\n")
    one_line_error(lambda: Config.load(tmp_path / "huge.yaml"), "huge.yaml is over 1 MB")


@pytest.mark.parametrize("text, words", [
    ("model:\n  attention: " + "z" * 5000 + "\n", ["model.attention must be one of"]),
    ("train:\n  max_time: " + "9" * 5000 + "x\n", ["cannot read duration"]),
    ("model:\n  hidden_size: " + "9" * 5000 + "\n", ["holds a value that cannot be read"]),
    ("model:\n  " + "k" * 1000 + ": 1\n", ["unknown config key(s) model.kkk"]),
    ("model: " + "[" * 50_000 + "\n", ["nested too deeply"]),
    ("model:\n\thidden_size: 3\n" + "#" * 5000 + "\n", ["not valid YAML", "line 2, column 1"]),
], ids=["literal", "duration", "long integer", "key", "nesting", "syntax"])
def test_messages_quote_values_cut_short(tmp_path, text, words):
    (tmp_path / "long.yaml").write_text(text)
    message = one_line_error(lambda: Config.load(tmp_path / "long.yaml"), *words)
    assert len(message) < 250, message


@pytest.mark.parametrize("assignment, words", [
    ("model.attention=" + "z" * 5000, ["model.attention must be one of", "..."]),
    ("model.hidden_size=" + "8" * 400, ["model.hidden_size=888", "...", "parameters"]),
    ("model.dropout=" + "9" * 400, ["model.dropout must be a number"]),
    ("train.max_time=nan", ["duration must be positive and finite"]),
], ids=["literal", "size", "float", "duration"])
def test_set_values_are_quoted_cut_short(assignment, words):
    message = one_line_error(lambda: Config().with_overrides([assignment]), *words)
    assert len(message) < 400, message


@pytest.mark.parametrize("assignments, key", [
    (["model.hidden_size=1000000000"], "model.hidden_size=1000000000"),
    (["tokenizer.vocab_size=100000000"], "tokenizer.vocab_size=100000000"),
    (["model.encoder_layers=100000", "model.hidden_size=4096"], "model.encoder_layers=100000"),
])
def test_a_model_too_large_to_be_meant_is_refused_before_it_is_built(assignments, key):
    """Only arithmetic on the config: a model of 1.7e19 parameters is never allocated."""
    one_line_error(lambda: Config().with_overrides(assignments), "parameters, over the limit of 2,000,000,000", key)
    assert Config().with_overrides(["model.hidden_size=4096"]).model.hidden_size == 4096  # 200M parameters: allowed


@pytest.mark.parametrize("settings", [
    {},
    {"attention": "dot", "input_feeding": True, "tie_embeddings": False, "encoder_layers": 3},
    {"attention": "bahdanau", "decoder_layers": 2, "embed_size": 32},
    {"tie_embeddings": False, "embed_size": 24, "hidden_size": 40, "decoder_layers": 3},
])
@pytest.mark.parametrize("joint", [True, False])
def test_the_parameter_count_matches_the_model_built(settings, joint):
    from lstmmt.config import ModelConfig
    from lstmmt.model import Seq2Seq, count_parameters, parameter_count

    config = ModelConfig(**{"embed_size": 16, "hidden_size": 32, **settings})
    assert parameter_count(config, 50, 60, joint) == count_parameters(Seq2Seq(config, 50, 60, joint))
