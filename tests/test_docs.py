"""Generated reference pages are current, documented defaults are the code's, and the version is printed."""

import re
from pathlib import Path

from typer.testing import CliRunner

from lstmmt import __version__, clidoc
from lstmmt.cli import app
from lstmmt.config import default_text

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def test_docs_cli_md_is_generated_from_the_current_commands():
    assert clidoc.main(["--check"]) == 0, "docs/cli.md is stale: run python -m lstmmt.clidoc"


def test_cli_reference_names_every_command_and_option():
    text = clidoc.reference()
    for command in ("preprocess", "train", "translate", "evaluate", "export", "serve"):
        assert f"## lstmmt {command}\n" in text
    assert "`--tokenizer-from`" in text and "`--max-connections`" in text


def test_version_option_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lstmmt {__version__}"


def test_serve_help_names_the_extra_to_install():
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "pip install 'lstmmt[serve]'" in result.output


def test_the_guide_s_table_of_training_defaults_matches_the_config():
    rows = re.findall(r"^\| `(train\.\w+)` \| `([^`]*)` \|", GUIDE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(rows) >= 8, rows
    for key, documented in rows:
        assert documented == default_text(key), f"docs/guide.md says {key} defaults to {documented}"
