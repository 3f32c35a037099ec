"""The one reader of logs/metrics.jsonl (train appends one JSON object per event).

A process killed mid-write leaves a torn final line: it is skipped. A damaged line
anywhere else means the file was edited or corrupted, and is a UserError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from lstmmt.errors import UserError


def read_metrics(path: Path, event: str | None = None) -> list[dict]:
    """The records of a metrics.jsonl file (those of one event kind when given); [] when it is missing."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        return []
    records = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            if number == last:  # torn by a kill mid-write
                continue
            raise UserError(f"{path} line {number + 1} is damaged: delete that line (or the file) and run again")
        if event is None or record["event"] == event:
            records.append(record)
    return records
