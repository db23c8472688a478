"""`wmg export csv|jsonl`: every table and view of a selection of runs, one file each, for pandas,
R or a spreadsheet. Values are written as SQLite holds them (booleans 0/1, timestamps as text,
JSON columns as their JSON text), the same on every kind of store."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

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
        tmp = path.with_suffix(path.suffix + ".part")  # a reader never sees half a file
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if fmt == "csv":
                w = csv.DictWriter(fh, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)
            else:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        written.append((name, kind, len(rows), str(path)))
    return written
