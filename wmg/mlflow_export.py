"""`wmg export mlflow`: each wmg run as an MLflow run, through MLflow's own client API, into any
tracking URI (`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else MLflow's default).

What a wmg run becomes:
- parameters: the data (path, SHA-256), split, seed, init and the options of the run, and every
  model's hyperparameters as `<model>.<name>`;
- step metrics: `<model>/train_loss` and `<model>/learning_rate` at every optimizer step, and per
  epoch `<model>/epoch_train_loss`, `<model>/val_loss`, `<model>/dev_accuracy`, `<model>/dev_format`;
- the comparison's metrics, one point per comparison of the validation split (its step is the
  evaluation id): per model format, gold-type accuracy (overall and open form), location in the
  excerpt, ROUGE; per baseline its gold-type accuracy; the full-agreement rate;
- artifacts: the comparison's `ensemble_report.json` (when its file is still there) and the run's
  plots (`wmg plot`);
- tags: `wmg.run_id`, `wmg.store` (which results store), `wmg.study_id`, `wmg.fold`, the status.

Exporting again updates the same MLflow run, found by its `wmg.store` and `wmg.run_id` tags:
every metric point has a fixed timestamp (the run's start), and only the points the MLflow run
lacks are logged (a later comparison adds its own), so nothing is doubled; parameters never
change for a stored run.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from .config import ConfigError
from .store import Store
from .store.records import RunInfo

EXPERIMENT = "wmg"
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}


class MlflowExportError(ConfigError):
    """MLflow is missing or refused the export (a ConfigError: the CLI reports it as one line)."""


def _ms(dt) -> int:
    from datetime import timezone

    return int(dt.replace(tzinfo=timezone.utc).timestamp() * 1000)


def _flat(prefix: str, value: Any) -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in sorted(value.items()):
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def run_params(run: RunInfo) -> dict[str, str]:
    cfg = {k: v for k, v in (run.config or {}).items() if k not in ("progress",)}
    params = dict(_flat("", {"data_path": run.data_path, "data_sha256": run.data_sha256, "seed": run.seed,
                             "n_train": run.n_train, "n_validation": run.n_validation,
                             "init_requested": run.init_requested, "device": run.device, "platform": run.platform}))
    params.update(_flat("option", cfg))
    for m in run.models:
        params.update(_flat(m.name, {**(m.hyperparams or {}), "init": m.init, "parameters": m.parameters,
                                     "vocab_size": m.vocab_size}))
    return params


def run_metrics(store: Store, run: RunInfo) -> list[tuple[str, float, int]]:
    """(key, value, step) of every metric point of the run."""
    points: list[tuple[str, float, int]] = []
    for m in run.models:
        for s in store.train_steps(m.id):
            points += [(f"{m.name}/train_loss", s.loss, s.step), (f"{m.name}/learning_rate", s.lr, s.step)]
        for e in store.query("SELECT epoch, train_loss, val_loss, dev_accuracy, dev_format FROM epoch_losses "
                             "WHERE run_model_id = :m ORDER BY epoch", m=m.id):
            for key in ("train_loss", "val_loss", "dev_accuracy", "dev_format"):
                if e[key] is not None:
                    points.append((f"{m.name}/{'epoch_train_loss' if key == 'train_loss' else key}", e[key],
                                   int(e["epoch"])))
    evals = store.query("SELECT id FROM evaluations WHERE run_id = :r AND status = 'completed' "
                        "AND source = 'validation' ORDER BY id", r=run.id)
    for (eid,) in ((e["id"],) for e in evals):
        ev = store.get_evaluation(eid)
        for row in store.query("SELECT model, format_accuracy, gold_accuracy, location_in_excerpt, rouge1_f1, "
                               "rouge_l_f1 FROM model_comparison WHERE evaluation_id = :e", e=eid):
            for key in ("format_accuracy", "gold_accuracy", "location_in_excerpt", "rouge1_f1", "rouge_l_f1"):
                if row[key] is not None:
                    points.append((f"{row['model']}/{key}", row[key], eid))
        for name, g in (ev.gold_accuracy_open or {}).items():
            kind = "baseline/" if name in (ev.baseline_accuracy or {}) else ""
            points.append((f"{kind}{name}/gold_accuracy_open", g, eid))
        for name, g in (ev.baseline_accuracy or {}).items():
            points.append((f"baseline/{name}/gold_accuracy", g, eid))
        if ev.full_agreement_rate is not None:
            points.append(("full_agreement_rate", ev.full_agreement_rate, eid))
    return [(k, float(v), step) for k, v, step in points if v is not None and math.isfinite(float(v))]


def _artifacts(store: Store, run: RunInfo, folder: Path) -> list[Path]:
    from .analysis import select
    from .analysis.plots import plot_all

    files: list[Path] = []
    ev = run.latest_evaluation
    if ev is not None and ev.report_path and Path(ev.report_path).is_file():
        files.append(Path(ev.report_path))
    if ev is not None and ev.status == "completed":
        files += plot_all(store, select(store, run_ids=[run.id]), folder / "plots")
    return files


def export_runs(store: Store, run_ids: Sequence[int], tracking_uri: str | None = None,
                experiment: str = EXPERIMENT, artifacts: bool = True) -> list[tuple[int, str, str]]:
    """Log each run into MLflow; returns (wmg run id, MLflow run id, "created" or "updated")."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowExportError("MLflow is not installed: pip install 'wmg[mlflow]' (or mlflow-skinny)") from None

    try:
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        done = []
        for rid in run_ids:
            run = store.get_run(rid)
            found = client.search_runs([exp_id], filter_string=f"tags.`wmg.run_id` = '{rid}' and "
                                                               f"tags.`wmg.store` = '{store.shown}'")
            tags = {"wmg.run_id": str(rid), "wmg.store": store.shown, "wmg.status": run.status,
                    "mlflow.runName": f"wmg run {rid}", "wmg.models": ",".join(m.name for m in run.models)}
            if run.study_id is not None:
                tags.update({"wmg.study_id": str(run.study_id), "wmg.fold": str(run.fold)})
            if found:
                mid, action = found[0].info.run_id, "updated"
            else:
                mid = client.create_run(exp_id, start_time=_ms(run.created_at), tags=tags).info.run_id
                action = "created"
            stamp = _ms(run.created_at)
            params = [Param(k, v[:6000]) for k, v in run_params(run).items()]
            metrics = [Metric(k, v, stamp, step) for k, v, step in run_metrics(store, run)]
            if action == "updated":  # only the points not logged before (a folder store would keep both)
                logged = {(h.key, h.step, h.timestamp, h.value) for key in {m.key for m in metrics}
                          for h in client.get_metric_history(mid, key)}
                metrics = [m for m in metrics if (m.key, m.step, m.timestamp, m.value) not in logged]
            client.log_batch(mid, tags=[RunTag(k, v) for k, v in tags.items()])
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(mid, params=params[i:i + 100])
            for i in range(0, len(metrics), 1000):
                client.log_batch(mid, metrics=metrics[i:i + 1000])
            if artifacts:
                with tempfile.TemporaryDirectory() as tmp:
                    for f in _artifacts(store, run, Path(tmp)):
                        client.log_artifact(mid, str(f), "plots" if f.suffix == ".png" else None)
            client.set_terminated(mid, MLFLOW_STATUS.get(run.status, "FINISHED"),
                                  end_time=_ms(run.finished_at) if run.finished_at else None)
            done.append((rid, mid, action))
        return done
    except MlflowException as exc:
        raise MlflowExportError(f"MLflow refused the export: {str(exc).splitlines()[0]}") from None
