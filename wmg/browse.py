"""results.db in Datasette: the canned queries (one per research question of the README's
"Querying results.db" section) ship with the package as `datasette-metadata.json`, keyed to a
database named `results`; `metadata_for` keys them to any SQLite file's name, since Datasette
names a database after its file."""
from __future__ import annotations

import json
from pathlib import Path

METADATA = Path(__file__).with_name("datasette-metadata.json")


def metadata_for(db_path: str | Path) -> dict:
    meta = json.loads(METADATA.read_text())
    meta["databases"] = {Path(db_path).stem: meta["databases"]["results"]}
    return meta
