"""Generated reference pages are current, and the version is printed."""

from typer.testing import CliRunner

from lstmmt import __version__, clidoc
from lstmmt.cli import app


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
