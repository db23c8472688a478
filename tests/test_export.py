"""`wmg export csv|jsonl|mlflow` on a store with known rows (tests/analysis_fixture.py)."""
import csv
import json

import pytest
from click.testing import CliRunner

from conftest import BACKENDS
from tests.analysis_fixture import build
from wmg.cli import main
from wmg.store import Store


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, new_store):
    db = new_store(request.param)
    assert build(db) == ((1, 1), (2, 2))
    return db


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read(path):
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_table_and_view_of_the_selected_run_one_file_each(store, tmp_path, fmt):
    r = invoke("export", fmt, "--run-id", 1, "--db", store, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    names = {row["name"] for row in Store(store).query(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")} if not store.startswith("postgresql") \
        else None
    files = {p.stem for p in tmp_path.glob(f"*.{fmt}")}
    if names is not None:
        assert files == names - {"alembic_version", "sqlite_sequence"}
    assert {"runs", "run_models", "train_steps", "predictions", "model_comparison", "confusion"} <= files
    assert [row["id"] for row in read(tmp_path / f"runs.{fmt}")] in (["1"], [1])
    preds = read(tmp_path / f"predictions.{fmt}")
    assert len(preds) == 8 and {str(p["model"]) for p in preds} == {"m1", "m2"}  # 4 examples x 2 models
    assert len(read(tmp_path / f"train_steps.{fmt}")) == 4  # 2 steps x 2 models
    comparison = read(tmp_path / f"model_comparison.{fmt}")
    assert sorted((c["model"], float(c["gold_accuracy"])) for c in comparison) == [("m1", 0.75), ("m2", 0.5)]
    assert not list(tmp_path.glob("*.part"))


def test_all_runs_and_the_two_formats_agree(store, tmp_path):
    for fmt in ("csv", "jsonl"):
        r = invoke("export", fmt, "--all-runs", "--db", store, "--out", tmp_path / fmt)
        assert r.exit_code == 0, r.output
    for path in (tmp_path / "csv").glob("*.csv"):
        as_csv, as_jsonl = read(path), read(tmp_path / "jsonl" / f"{path.stem}.jsonl")
        assert len(as_csv) == len(as_jsonl), path.stem
        assert [str(v) if v is not None else "" for row in as_jsonl for v in row.values()] == \
               [v for row in as_csv for v in row.values()], path.stem
    assert len(read(tmp_path / "csv" / "predictions.csv")) == 8 + 15


def test_export_of_nothing_or_an_unknown_run_is_one_line(store, tmp_path):
    r = invoke("export", "csv", "--db", store, "--out", tmp_path)
    assert r.exit_code == 2 and "nothing selected" in r.output
    r = invoke("export", "csv", "--run-id", 9, "--db", store, "--out", tmp_path)
    assert r.exit_code == 1 and "no run with id 9" in r.output and len(r.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["sqlite", "folder"])
def test_mlflow_export_reads_back_and_a_second_export_updates(store, tmp_path, kind, monkeypatch):
    """Into MLflow's default kind of local store (SQLite) and into a ./mlruns-style folder, which
    MLflow 3 keeps in maintenance mode and opens only when MLFLOW_ALLOW_FILE_STORE is set."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if kind == "folder":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if kind == "sqlite" else (tmp_path / "mlruns").as_uri()
    for _ in range(2):  # the second export updates the same MLflow runs
        r = invoke("export", "mlflow", "--all-runs", "--db", store, "--tracking-uri", uri)
        assert r.exit_code == 0, r.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("wmg")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs([exp.experiment_id])
    assert sorted(runs["tags.wmg.run_id"]) == ["1", "2"] and set(runs["status"]) == {"FINISHED"}
    one = runs[runs["tags.wmg.run_id"] == "1"].iloc[0]
    assert one["tags.wmg.store"] == Store(store).shown and one["params.m1.epochs"] == "3"
    assert one["params.data_sha256"] == "0" * 64 and one["params.m2.micro_batch_size"] == "8"
    assert one["metrics.m1/gold_accuracy"] == 0.75 and one["metrics.m2/gold_accuracy"] == 0.5
    history = client.get_metric_history(one["run_id"], "m1/train_loss")
    assert [(h.step, h.value) for h in history] == [(1, 3.0), (2, 1.5)]  # not doubled by the second export
    assert [h.value for h in client.get_metric_history(one["run_id"], "m1/val_loss")] == [2.5]
    artifacts = {a.path for a in client.list_artifacts(one["run_id"], "plots")}
    assert any(p.endswith("_confusion_m1.png") or "confusion" in p for p in artifacts), artifacts
    assert any("loss" in p for p in artifacts), artifacts


def test_mlflow_export_into_an_unusable_uri_is_one_line(store, tmp_path):
    r = invoke("export", "mlflow", "--run-id", 1, "--db", store, "--tracking-uri", "nosuchscheme://x",
               "--no-artifacts")
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
