"""`wmg export csv|jsonl`: every table and view of a selection of runs, one file each, for pandas,
R or a spreadsheet. Values are written as SQLite holds them (booleans 0/1, timestamps as text,
JSON columns as their JSON text), the same on every kind of store.

`wmg import`: the tables of such a JSONL folder, or of another store, added to this store
(`Store.import_tables`), so runs made on several machines end up in one store."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from .checkpoint import atomic_write_text
from .store import Store, StoreError


def export_tidy(store: Store, run_ids: Sequence[int], out: str | Path, fmt: str,
                study_ids: Sequence[int] = ()) -> list[tuple[str, str, int, str]]:
    """Write DIR/<name>.csv|jsonl per table and view; returns (name, kind, rows, path) per file."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind, columns, rows in store.export_tables(run_ids, study_ids):
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


def read_tables(source: str | Path, into: Store | None = None) -> dict[str, list[dict]]:
    """The tables to import from `source`: a folder written by `wmg export jsonl` (one
    <table>.jsonl per table of the schema; the views' files are ignored) or another store (a
    SQLite file or SQLAlchemy URL, never `into`), all of whose runs are taken."""
    from .data import json_objects
    from .store import schema as t

    path = Path(source)
    if "://" not in str(source) and not path.exists():
        raise StoreError(f"{source}: no such folder or store file")
    if path.is_dir():
        tables = {}
        for name in t.Base.metadata.tables:
            f = path / f"{name}.jsonl"
            if not f.is_file():
                if (path / f"{name}.csv").is_file():
                    raise StoreError(f"{path} holds a CSV export; import reads `wmg export jsonl` folders "
                                     f"(CSV loses the values' types)")
                raise StoreError(f"{f} is missing: not a folder written by `wmg export jsonl`")
            tables[name] = [row for _, row in json_objects(f)]
        return tables
    if path.suffix.lower() in (".jsonl", ".csv", ".json"):
        raise StoreError(f"{path}: give the folder `wmg export jsonl` wrote, not one of its files")
    other = Store(str(source))
    if into is not None and _same_store(other.url, into.url):
        raise StoreError(f"{other.shown} is the store to import into")
    revision = other.revision()
    if revision is None:  # a path that is no store: refuse before anything is made there
        raise StoreError(f"{other.shown} is not a wmg results store")
    if revision != Store.head():
        raise StoreError(f"{other.shown} is at schema revision {revision}, this wmg at {Store.head()}: "
                         f"run `wmg db upgrade --db {source}` first")
    run_ids = [r.id for r in other.list_runs()]
    study_ids = [row["id"] for row in other.query("SELECT id FROM studies")]
    return {name: rows for name, kind, _, rows in other.export_tables(run_ids, study_ids) if kind == "table"}


def _same_store(a: str, b: str) -> bool:
    if a.startswith("sqlite:///") and b.startswith("sqlite:///"):
        return Path(a[len("sqlite:///"):]).resolve() == Path(b[len("sqlite:///"):]).resolve()
    return a == b
