"""Writes the key tables of docs/config.md from the config dataclasses, so the reference cannot
drift from the code: `python -m lstmmt.configdoc` rewrites them in place, `--check` only says
whether they are current. The prose around the tables is written by hand and kept as it is."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Literal

from lstmmt.config import Config, allowed_text, default_text
from lstmmt.rundir import atomic_write_text

DOC = Path(__file__).resolve().parents[1] / "docs/config.md"
TABLE = re.compile(r"(<!-- generated table: (\w+) -->\n).*?(<!-- end of generated table -->)", re.DOTALL)
"""A generated table sits between these markers; the section is named in the first."""


def type_text(hint: typing.Any) -> str:
    """A field's type as docs/config.md names it: int, float, bool, str, "int or null"."""
    if typing.get_origin(hint) is Literal:
        return "str"
    args = typing.get_args(hint)
    if type(None) in args:
        return f"{type_text(next(arg for arg in args if arg is not type(None)))} or null"
    return hint.__name__


def cell(text: str) -> str:
    """`text` safe in a Markdown table cell (a pipe, even inside backticks, would split the cell)."""
    return text.replace("|", "\\|")


def table(section: str) -> str:
    """The Markdown table of config section `section`: key, type, default, allowed values, meaning."""
    cls = typing.get_type_hints(Config)[section]
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for item in dataclasses.fields(cls):
        key = f"{section}.{item.name}"
        default = default_text(key)
        shown = f"`{default}`" if isinstance(item.default, str) else default
        values = [f"`{item.name}`", type_text(hints[item.name]), shown, allowed_text(key), item.metadata["help"]]
        rows.append("| " + " | ".join(cell(value) for value in values) + " |")
    return "\n".join(rows) + "\n"


def rendered(doc: str) -> str:
    """`doc` with each generated table rewritten from the dataclasses."""
    return TABLE.sub(lambda match: match[1] + table(match[2]) + match[3], doc)


def main(argv: list[str]) -> int:
    """Rewrite docs/config.md's tables (or, with --check, exit 1 when they are stale)."""
    doc = DOC.read_text(encoding="utf-8")
    return refresh(DOC, doc, rendered(doc), "lstmmt.configdoc", "--check" in argv)


def refresh(path: Path, current: str, fresh: str, module: str, check: bool) -> int:
    """Write a generated page `fresh` over `current` at `path`, or with `check` only say (exit
    status 1) that it is stale; the one rule of the doc generators (configdoc, clidoc)."""
    if check:
        if fresh != current:
            print(f"{path} is stale: run python -m {module}", file=sys.stderr)
        return int(fresh != current)
    if fresh != current:
        atomic_write_text(path, fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
