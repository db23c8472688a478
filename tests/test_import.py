"""`wmg import`: runs of another store, or of a `wmg export jsonl` folder, added to a store; the
folds of one study made in two stores brought together (tests/analysis_fixture.py's rows)."""
import json

import pytest
from click.testing import CliRunner

from conftest import sql
from tests.analysis_fixture import AR, CF, IO, RW, TS, build, make_run
from wmg.cli import main
from wmg.store import Store
from wmg.store import schema as t
from wmg.store.session import plain_value

TABLES = sorted(t.Base.metadata.tables)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def counts(db):
    return {name: sql(db, f"SELECT COUNT(*) FROM {name}")[0][0] for name in TABLES}


def comparison(db):
    """The model_comparison view, without its ids: what the analysis reads of each run."""
    return sorted(tuple(plain_value(v) for v in row) for row in sql(db, "SELECT r.created_at, c.model, c.examples, c.gold_accuracy, c.format_accuracy "
                          "FROM model_comparison c JOIN runs r ON r.id = c.run_id"))


def imported(result):
    out = {}
    for r in json.loads(result.stdout):
        out.setdefault(r["table"], []).append(r)
    return out


@pytest.fixture(scope="module")
def source(new_store, tmp_path_factory):
    """A store with the fixture's two runs, and its JSONL export."""
    db = new_store("sqlite")
    build(db)
    folder = tmp_path_factory.mktemp("export")
    r = invoke("export", "jsonl", "--all-runs", "--db", db, "--out", folder)
    assert r.exit_code == 0, r.output
    return db, folder


def test_every_import_key_and_export_rule_names_every_table():
    assert sorted(Store.IMPORT_KEYS) == sorted(Store.EXPORT_FILTERS) == TABLES
    for name, key in Store.IMPORT_KEYS.items():
        assert set(key) <= set(t.Base.metadata.tables[name].c.keys()), name


def test_an_export_folder_imports_whole_and_a_second_import_adds_nothing(source, any_db):
    db, folder = source
    Store(any_db).engine()
    make_run(any_db, ["x"], [RW], [(RW,)], words=[5], forms=["open"])  # a run of its own first: ids shift
    before = counts(any_db)
    r = invoke("import", folder, "--db", any_db, "--format", "json")
    assert r.exit_code == 0, r.output
    added = {row["name"]: row for row in imported(r)["tables"]}
    after = counts(any_db)
    for name, n in counts(db).items():
        assert after[name] - before[name] == n == added[name]["added"], name
    assert [(x["source_run"], x["run_here"]) for x in imported(r)["runs"]] == [(1, 2), (2, 3)]
    assert [row for row in comparison(any_db) if row[1] != "x"] == comparison(db)
    # the references follow the new ids: every prediction of run 2 here is of a model and an example of run 2
    assert sql(any_db, "SELECT COUNT(*) FROM predictions p JOIN run_models m ON m.id = p.run_model_id "
                       "JOIN examples x ON x.id = p.example_id JOIN evaluations e ON e.id = p.evaluation_id "
                       "WHERE m.run_id = 2 AND x.run_id = 2 AND e.run_id = 2")[0][0] == 8
    again = invoke("import", folder, "--db", any_db, "--format", "json")
    assert again.exit_code == 0, again.output
    assert counts(any_db) == after
    assert all(row["added"] == 0 and row["already_here"] == counts(db)[row["name"]]
               for row in imported(again)["tables"])
    shown = invoke("analyze", "models", "--run-id", 3, "--db", any_db, "--format", "json")
    original = invoke("analyze", "models", "--run-id", 2, "--db", db, "--format", "json")
    assert shown.exit_code == 0 and original.exit_code == 0
    assert without_ids(json.loads(shown.stdout)) == without_ids(json.loads(original.stdout))
    assert {r["run_id"] for r in json.loads(shown.stdout) if "run_id" in r} == {3}


def without_ids(records):
    return [{k: v for k, v in r.items() if k not in ("run_id", "evaluation_id")} for r in records]


def test_a_store_imports_the_same_as_its_export(source, new_store):
    db, folder = source
    a, b = new_store("sqlite"), new_store("sqlite")
    assert invoke("import", db, "--db", a).exit_code == 0
    assert invoke("import", folder, "--db", b).exit_code == 0
    assert counts(a) == counts(b) == counts(db)
    assert comparison(a) == comparison(b) == comparison(db)


def study_store(new_store):
    db = new_store("sqlite")
    study = Store(db).create_study(data_path="fixture.jsonl", data_sha256="0" * 64, folds=2, seeds=[1], config={})
    return db, study


def test_the_folds_of_one_study_made_in_two_stores_come_together(new_store, tmp_path):
    first, study = study_store(new_store)
    make_run(first, ["m1", "m2"], [RW, AR], [(RW, RW), (AR, CF)], words=[10, 20], forms=["open"] * 2,
             study_id=study, fold=1)
    # the second machine starts from the study as the first recorded it, fold 1 done
    assert invoke("export", "jsonl", "--study", study, "--db", first, "--out", tmp_path / "s").exit_code == 0
    second = new_store("sqlite")
    make_run(second, ["other"], [IO], [(IO,)], words=[5], forms=["open"])  # ids differ between the stores
    assert invoke("import", tmp_path / "s", "--db", second).exit_code == 0
    study_there = sql(second, "SELECT study_id FROM runs WHERE fold = 1")[0][0]
    make_run(second, ["m1", "m2"], [TS, CF], [(TS, CF), (AR, CF)], words=[30, 40], forms=["open"] * 2,
             study_id=study_there, fold=2)
    r = invoke("import", second, "--db", first, "--format", "json")
    assert r.exit_code == 0, r.output
    runs = imported(r)["runs"]
    assert sorted((x["source_run"], x["added"]) for x in runs) == [(1, "yes"), (2, "no (already here)"),
                                                                   (3, "yes")]
    assert sql(first, "SELECT COUNT(*) FROM studies")[0][0] == 1
    assert sorted(sql(first, "SELECT fold, study_id FROM runs WHERE study_id IS NOT NULL")) == [(1, study), (2, study)]
    out = invoke("analyze", "models", "--study", study, "--db", first, "--table", "study", "--format", "json")
    assert out.exit_code == 0, out.output
    pooled = {(row["instruction_form"], row["system"]): row for row in json.loads(out.stdout)}
    assert pooled[("all", "m1")]["examples"] == 4 and pooled[("all", "m1")]["folds_done"] == 2
    assert pooled[("all", "m1")]["gold_accuracy"] == pytest.approx(3 / 4)  # RW, AR, TS right, AR for CF wrong
    assert pooled[("all", "m2")]["gold_accuracy"] == pytest.approx(2 / 4)


def test_a_fold_held_here_by_another_run_is_refused_and_nothing_is_added(new_store, tmp_path):
    first, study = study_store(new_store)
    second = new_store("sqlite")
    make_run(second, ["m1"], [RW], [(RW,)], words=[5], forms=["open"])
    make_run(first, ["m1"], [RW], [(AR,)], words=[5], forms=["open"], study_id=study, fold=1)
    assert invoke("import", first, "--db", second).exit_code == 0
    study_there = sql(second, "SELECT study_id FROM runs WHERE fold = 1")[0][0]
    make_run(first, ["m1"], [RW], [(RW,)], words=[5], forms=["open"], study_id=study, fold=2)
    make_run(second, ["m1"], [CF], [(CF,)], words=[5], forms=["open"], study_id=study_there, fold=2)
    before = counts(second)
    r = invoke("import", first, "--db", second)
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"Error: run 2: study {study_there} here already has a run for fold 2, seed 1"]
    assert counts(second) == before


def test_bad_sources_are_one_line_and_change_nothing(source, new_store, tmp_path):
    db, folder = source
    target = new_store("sqlite")
    make_run(target, ["m1"], [RW], [(RW,)], words=[5], forms=["open"])
    before = counts(target)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.glob("*.jsonl"):
        (broken / f.name).write_text(f.read_text())
    (broken / "predictions.jsonl").write_text((folder / "predictions.jsonl").read_text() + "{not json\n")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "runs.jsonl").write_text((folder / "runs.jsonl").read_text())
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in folder.glob("*.jsonl"):
        (newer / f.name).write_text(f.read_text())
    rows = [json.loads(line) for line in (folder / "agreements.jsonl").read_text().splitlines()]
    (newer / "agreements.jsonl").write_text("".join(json.dumps({**r, "novelty": 1}) + "\n" for r in rows))
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    for f in folder.glob("*.jsonl"):
        (dangling / f.name).write_text(f.read_text())
    (dangling / "run_models.jsonl").write_text("")
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    lines = {
        broken: f"Error: {broken / 'predictions.jsonl'}:{len(read_lines(folder / 'predictions.jsonl')) + 1}: not valid JSON",
        partial: f"Error: {partial / 'studies.jsonl'} is missing: not a folder written by `wmg export jsonl`",
        newer: "Error: agreements: column novelty is not in this store's schema (exported by a newer wmg? "
               "upgrade this one)",
        dangling: "_id 1 is not among the imported run_models",
        tmp_path / "nowhere": f"Error: {tmp_path / 'nowhere'}: no such folder or store file",
        folder / "runs.jsonl": f"Error: {folder / 'runs.jsonl'}: give the folder `wmg export jsonl` wrote, "
                               f"not one of its files",
        target: None,
        not_a_store: None,
    }
    for bad, line in lines.items():
        r = invoke("import", bad, "--db", target)
        assert r.exit_code == 1, (bad, r.output)
        shown = r.output.strip().splitlines()
        assert len(shown) == 1 and shown[0].startswith("Error: "), (bad, r.output)
        if line is not None:
            assert line in shown[0], (shown[0], line)
    assert "is the store to import into" in invoke("import", target, "--db", target).output
    assert counts(target) == before


def read_lines(path):
    return path.read_text().splitlines()


def test_a_run_still_running_is_not_imported(new_store):
    db = new_store("sqlite")
    make_run(db, ["m1"], [RW], [(RW,)], words=[5], forms=["open"])
    sql_update = "UPDATE runs SET status = 'running', host = 'lab-7'"
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text(sql_update))
    engine.dispose()
    target = new_store("sqlite")
    r = invoke("import", db, "--db", target)
    assert r.exit_code == 1
    assert r.output.strip() == "Error: run 1 is still running (on lab-7): export it once it has finished"


def test_a_study_with_no_run_yet_travels_and_an_empty_export_is_refused(new_store, tmp_path):
    first, study = study_store(new_store)
    r = invoke("export", "jsonl", "--study", study, "--db", first, "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    second = new_store("sqlite")
    make_run(second, ["m1"], [RW], [(RW,)], words=[5], forms=["open"])
    r = invoke("import", tmp_path / "s", "--db", second, "--format", "json")
    assert r.exit_code == 0, r.output
    assert sql(second, "SELECT folds, seeds_json, data_sha256 FROM studies") == [(2, "[1]", "0" * 64)]
    there = sql(second, "SELECT id FROM studies")[0][0]
    assert Store(second).get_study(there).runs == []  # ready for `wmg work --study` there
    (tmp_path / "none").mkdir()
    r = invoke("export", "jsonl", "--run-id", 1, "--db", second, "--out", tmp_path / "none")
    for f in (tmp_path / "none").glob("*.jsonl"):
        f.write_text("")
    r = invoke("import", tmp_path / "none", "--db", first)
    assert r.exit_code == 1 and r.output.strip() == f"Error: {tmp_path / 'none'} holds no runs and no studies"
