"""`wmg export csv|jsonl`: every table and view of a selection of runs, one file each, for pandas,
R or a spreadsheet. Values are written as SQLite holds them (booleans 0/1, timestamps as text,
JSON columns as their JSON text), the same on every kind of store."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from .checkpoint import atomic_write_text
from .store import Store


def export_tidy(store: Store, run_ids: Sequence[int], out: str | Path, fmt: str) -> list[tuple[str, str, int, str]]:
    """Write DIR/<name>.csv|jsonl per table and view; returns (name, kind, rows, path) per file."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind, columns, rows in store.export_tables(run_ids):
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            text = io.StringIO(newline="")
            w = csv.DictWriter(text, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
            text = text.getvalue()
        else:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(path, text, newline="")  # a reader never sees half a file
        written.append((name, kind, len(rows), str(path)))
    return written
