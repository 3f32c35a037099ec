"""Writes docs/cli.md, the command reference, from the Typer app itself, so it cannot drift from
`lstmmt COMMAND --help`: `python -m lstmmt.clidoc` rewrites it, `--check` only says whether it
is current (tests/test_docs.py runs the check)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer

from lstmmt.cli import app
from lstmmt.configdoc import refresh

DOC = Path(__file__).resolve().parents[1] / "docs/cli.md"
HEADER = """# Command reference

Generated from the commands themselves by `python -m lstmmt.clidoc` (do not edit by hand);
`lstmmt COMMAND --help` prints the same. Settings that live in the config are described in
docs/config.md; decode keys can be set on every translating command with `--set decode.KEY=VALUE`.
"""


def reference() -> str:
    """docs/cli.md: the global options, then each command's usage, description and options."""
    group = typer.main.get_command(app)  # typer's own click: read by attribute, not by class
    parts = [HEADER, "## lstmmt\n", _help(group.help), _params(group)]
    for name, command in group.commands.items():
        parts += [f"## lstmmt {name}\n", f"```\nlstmmt {name} {_usage(command)}\n```\n", _help(command.help),
                  _params(command)]
    return "\n".join(part for part in parts if part).rstrip() + "\n"


def _help(text: str | None) -> str:
    return inspect.cleandoc(text or "").replace("\\[", "[") + "\n" if text else ""  # rich's escaped brackets


def _metavar(argument: Any) -> str:
    return (argument.metavar or argument.name).upper()


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _usage(command: Any) -> str:
    pieces = [_metavar(p) if _is_argument(p) else "" for p in command.params]
    return " ".join(piece for piece in pieces if piece) + " [OPTIONS]"


def _params(command: Any) -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for param in command.params:
        if not _is_argument(param) and param.name != "help":
            rows.append(f"| {_names(param)} | {_default(param)} | {_cell(param.help or '')} |")
    arguments = [f"- `{_metavar(p)}`: {_cell(getattr(p, 'help', '') or '')}"
                 for p in command.params if _is_argument(p)]
    table = "\n".join(rows) + "\n" if len(rows) > 2 else ""
    return "\n".join(arguments) + ("\n\n" if arguments else "") + table


def _names(option: Any) -> str:
    names = ", ".join(f"`{name}`" for name in [*option.opts, *option.secondary_opts])
    return _cell(names + (" (repeatable)" if option.multiple else ""))


def _default(option: Any) -> str:
    default: Any = option.default
    if option.required:
        return "required"
    if default is None or default == [] or (option.is_flag and default is False and not option.secondary_opts):
        return ""
    if isinstance(default, (list, tuple)):
        default = " ".join(map(str, default))
    return _cell(f"`{default}`")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def main(argv: list[str]) -> int:
    """Rewrite docs/cli.md (or, with --check, exit 1 when it is stale)."""
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    return refresh(DOC, current, reference(), "lstmmt.clidoc", "--check" in argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
