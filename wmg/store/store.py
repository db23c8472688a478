"""The results store: one `Store` per URL owns the engine, the session scope, the lock/retry
policy and the dialect differences (as MLflow's `SqlAlchemyStore(uri)` does); every reader
and writer of wmg (pipeline, analysis, judging, the CLI) goes through one.

    store = Store("results.db")            # or postgresql+psycopg://user@host/db, or None: $WMG_DB
    run = store.get_run(1)                 # typed records (wmg.store.records), never ORM rows
    rows = store.query("SELECT * FROM model_comparison WHERE run_id = :r", r=1)

Each method that reads or writes is one short transaction, retried a bounded number of times
when SQLite reports the file locked or PostgreSQL rolls the transaction back for a conflict
(`session.retry_locked`). The schema is brought to the newest revision on first use in a
process. Engines are shared by the stores of one URL in a process (`session._engine`), so
building a `Store` is cheap and every command builds its own.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import Boolean, DateTime, Float, Integer, cast, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ..baseline import in_order
from ..data import Example as DataExample
from ..data import instruction_form
from ..parse import normalize_type
from . import schema as t
from .records import (AgreementRow, AnnotationRecord, BaselineRow, Claim, EvaluationInfo, EvaluationItem,
                      JudgmentRow, JudgmentSetInfo, Lease, ModelInfo, NewEvaluation, NewRun, PredictionRow, RunInfo,
                      StepRecord, StoredExample, StudyInfo, is_compared, lease_held, now)
from .session import (StoreError, _check_sqlite_file, _engine, _revision, _shown, db_url, head_revision,
                      is_sqlite, plain_value, ready_engine, retry_locked)


class Store:
    """The results store at `db` (a SQLAlchemy URL or a SQLite file path; None: `$WMG_DB`, else
    results.db). Nothing is opened until the first call."""

    def __init__(self, db: str | None = None):
        self.url = db_url(db)

    def __repr__(self) -> str:
        return f"Store({self.shown!r})"

    @property
    def shown(self) -> str:
        """The URL without its password, for messages."""
        return _shown(self.url)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return "sqlite" if is_sqlite(self.url) else "postgresql"

    def engine(self, write: bool = False, upgrade: bool = True) -> Engine:
        """The engine, the schema upgraded to head on first use in this process (`upgrade`).
        `write` (SQLite): an engine whose transactions take the write lock at BEGIN."""
        return ready_engine(self.url, upgrade=upgrade, write=write)

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, always close.
        `write=False` for read-only work (a deferred transaction that never takes the write lock)."""
        session = sessionmaker(bind=self.engine(write=write), expire_on_commit=False)()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @retry_locked
    def query(self, sql: str, **params) -> list[dict[str, Any]]:
        """Rows of a read-only SQL query (the analysis views), as dicts whose values read the same
        on every dialect (`session.plain_value`: SQLite's forms)."""
        with self.engine().connect() as conn:
            return [{k: plain_value(v) for k, v in r._mapping.items()} for r in conn.execute(text(sql), params)]

    # Each table's rows that belong to a set of runs (:runs) and their studies (:studies): the
    # condition that ties a row to its run. Every table of the schema must be here (a test checks).
    EXPORT_FILTERS = {
        "studies": "id IN :studies",
        "runs": "id IN :runs",
        "run_models": "run_id IN :runs",
        "train_steps": "run_model_id IN (SELECT id FROM run_models WHERE run_id IN :runs)",
        "epoch_losses": "run_model_id IN (SELECT id FROM run_models WHERE run_id IN :runs)",
        "evaluations": "run_id IN :runs",
        "examples": "run_id IN :runs",
        "predictions": "evaluation_id IN (SELECT id FROM evaluations WHERE run_id IN :runs)",
        "agreements": "evaluation_id IN (SELECT id FROM evaluations WHERE run_id IN :runs)",
        "baseline_predictions": "evaluation_id IN (SELECT id FROM evaluations WHERE run_id IN :runs)",
        "judgment_sets": "evaluation_id IN (SELECT id FROM evaluations WHERE run_id IN :runs)",
        "judgments": "set_id IN (SELECT j.id FROM judgment_sets j JOIN evaluations e ON e.id = j.evaluation_id "
                     "WHERE e.run_id IN :runs)",
        "annotations": "evaluation_id IN (SELECT id FROM evaluations WHERE run_id IN :runs)",
    }
    NOT_EXPORTED = {"alembic_version", "sqlite_sequence"}

    def export_tables(self, run_ids: Sequence[int], study_ids: Sequence[int] = ()
                      ) -> Iterator[tuple[str, str, list[str], list[dict[str, Any]]]]:
        """Every table and view of the store, each limited to the rows of these runs (and of their
        studies, and of `study_ids` even before they have a run): (name, "table" or "view",
        columns, rows), values in SQLite's forms."""
        from sqlalchemy import bindparam, inspect

        run_ids = sorted(set(run_ids))
        with self.engine().connect() as conn:
            insp = inspect(conn)
            studies = sorted(set(study_ids) | {r for (r,) in conn.execute(
                text("SELECT DISTINCT study_id FROM runs WHERE id IN :runs AND study_id IS NOT NULL")
                .bindparams(bindparam("runs", expanding=True)), {"runs": run_ids or [-1]})})
            params = {"runs": run_ids or [-1], "studies": studies or [-1]}
            for kind, names in (("table", insp.get_table_names()), ("view", insp.get_view_names())):
                for name in sorted(set(names) - self.NOT_EXPORTED):
                    columns = [c["name"] for c in (insp.get_columns(name))]
                    if kind == "table":
                        if name not in self.EXPORT_FILTERS:
                            raise StoreError(f"table {name} has no export rule (Store.EXPORT_FILTERS)")
                        where = self.EXPORT_FILTERS[name]
                    elif "run_id" in columns:
                        where = "run_id IN :runs"
                    elif "study_id" in columns:
                        where = "study_id IN :studies"
                    else:
                        raise StoreError(f"view {name} has neither run_id nor study_id to select its rows by")
                    order = "id" if "id" in columns else ", ".join(columns[:3])
                    stmt = text(f"SELECT * FROM {name} WHERE {where} ORDER BY {order}")
                    stmt = stmt.bindparams(*(bindparam(k, expanding=True) for k in params if f":{k}" in where))
                    rows = [{k: plain_value(v) for k, v in r._mapping.items()}
                            for r in conn.execute(stmt, {k: v for k, v in params.items() if f":{k}" in where})]
                    yield name, kind, columns, rows

    # What makes a row of another store the same record as one of this store (foreign keys already
    # mapped to this store's ids): `import_tables` keeps such a row as it is here and adds the rest.
    # Every table of the schema must be here (a test checks).
    IMPORT_KEYS = {
        "studies": ("created_at", "data_sha256"),
        "runs": ("created_at", "data_sha256", "seed"),
        "run_models": ("run_id", "name"),
        "train_steps": ("run_model_id", "step"),
        "epoch_losses": ("run_model_id", "epoch"),
        "evaluations": ("run_id", "created_at"),
        "examples": ("run_id", "evaluation_id", "split", "position"),
        "predictions": ("evaluation_id", "example_id", "run_model_id"),
        "agreements": ("evaluation_id", "example_id"),
        "baseline_predictions": ("evaluation_id", "example_id", "baseline"),
        "judgment_sets": ("evaluation_id", "judge", "created_at"),
        "judgments": ("set_id", "example_id", "kind", "model_a", "model_b"),
        "annotations": ("evaluation_id", "example_id", "annotator"),
    }

    @retry_locked
    def import_tables(self, tables: dict[str, Sequence[dict[str, Any]]]) -> tuple[list[tuple[str, int, int]],
                                                                                  list[tuple[int, int, bool]]]:
        """Rows of another store, as `export_tables` gives them (table name -> rows, values in
        SQLite's forms), added to this store under new ids in one transaction: all or nothing.
        Foreign keys follow the new ids; a row that is already here (the same `IMPORT_KEYS`) is kept
        as it is here, so importing twice adds nothing and the runs of one study made on several
        machines come together under one study. A run whose fold of the same study is held here by
        another run is refused. Returns ([(table, added, already here)], [(source run id, run id
        here, added)])."""
        from sqlalchemy import and_

        unknown = sorted(set(tables) - set(t.Base.metadata.tables))
        if unknown:
            raise StoreError(f"unknown table {unknown[0]} (not a table of this store's schema)")
        ids: dict[str, dict[int, int]] = {}
        counts, runs = [], []
        with self.session() as s:
            conn = s.connection()
            for table in t.Base.metadata.sorted_tables:  # parents before children
                rows = tables.get(table.name, ())
                fks = {fk.parent.name: fk.column.table.name for fk in table.foreign_keys}
                key = self.IMPORT_KEYS[table.name]
                columns = set(table.c.keys())
                mine = ids.setdefault(table.name, {})
                added = kept = 0
                for row in rows:
                    extra = sorted(set(row) - columns)
                    if extra:
                        raise StoreError(f"{table.name}: column {extra[0]} is not in this store's schema "
                                         f"(exported by a newer wmg? upgrade this one)")
                    values = {}
                    for name, value in row.items():
                        if name == "id":
                            continue
                        if value is not None and name in fks:
                            if value not in ids[fks[name]]:
                                raise StoreError(f"{table.name} row {row.get('id')}: {name} {value} is not among "
                                                 f"the imported {fks[name]}")
                            value = ids[fks[name]][value]
                        elif value is not None and isinstance(table.c[name].type, DateTime):
                            value = _datetime(value, table.name, name)
                        elif value is not None and isinstance(table.c[name].type, Boolean):
                            value = bool(value)
                        values[name] = value
                    missing = [c for c in key if c not in row]
                    if missing:
                        raise StoreError(f"{table.name} row {row.get('id')} has no {missing[0]}")
                    same = conn.execute(select(table.c.id).where(and_(*(
                        table.c[c].is_(None) if values[c] is None else table.c[c] == values[c] for c in key)))).first()
                    if same is None and table.name == "runs" and values["status"] == "running":
                        raise StoreError(f"run {row['id']} is still running (on {values.get('host') or 'its machine'}): "
                                         f"export it once it has finished")
                    if same is not None:
                        new_id, kept = same[0], kept + 1
                    else:
                        if table.name == "runs" and values.get("study_id") is not None and conn.execute(
                                select(table.c.id).where(table.c.study_id == values["study_id"],
                                                         table.c.fold == values.get("fold"),
                                                         table.c.seed == values["seed"])).first():
                            raise StoreError(f"run {row['id']}: study {values['study_id']} here already has a run "
                                             f"for fold {values.get('fold')}, seed {values['seed']}")
                        new_id = conn.execute(table.insert().values(**values)).inserted_primary_key[0]
                        added += 1
                    if "id" in row:
                        mine[row["id"]] = new_id
                    if table.name == "runs":
                        runs.append((row["id"], new_id, same is None))
                counts.append((table.name, added, kept))
        return counts, runs

    def revision(self) -> str | None:
        """The schema revision the store is at (None: not a wmg store yet); upgrades nothing."""
        _check_sqlite_file(self.url)
        return _revision(_engine(self.url), self.url)

    @staticmethod
    def head() -> str:
        """The newest schema revision this installation knows."""
        return head_revision()

    @retry_locked
    def create_run(self, *, data_path: str, data_sha256: str, examples_requested: int | None,
                   eval_split: float, seed: int, init_requested: str, device: str, platform: str,
                   config: dict, versions: dict, models: Sequence[tuple[Any, dict]],
                   train: Sequence[DataExample], validation: Sequence[DataExample],
                   owner: tuple[str, int, int | None] | None = None, study_id: int | None = None,
                   fold: int | None = None, lease: "Lease | None" = None) -> NewRun:
        """The run, its models (pending) and its split, written as `running` in one transaction.
        `owner` is the (host, pid, pid start time) of the process that trains it; `lease`, the
        `wmg work` lease it is made under."""
        host, pid, start = owner or (None, None, None)
        with self.session() as s:
            if study_id is not None:
                # PostgreSQL: the study's row locked until commit, so two processes cannot both find the fold
                # free and both take it (SQLite's write transaction is exclusive already; FOR UPDATE is left out)
                s.execute(select(t.Study.id).where(t.Study.id == study_id).with_for_update())
            if study_id is not None and s.execute(
                    select(t.Run.id).where(t.Run.study_id == study_id, t.Run.fold == fold, t.Run.seed == seed)).first():
                raise StoreError(f"study {study_id} already has a run for fold {fold}, seed {seed}")
            run = t.Run(created_at=now(), status="running", data_path=data_path, data_sha256=data_sha256,
                        host=host, pid=pid, process_start=start, study_id=study_id, fold=fold,
                        lease_owner=lease.owner if lease else None, lease_until=lease.until() if lease else None,
                        examples_requested=examples_requested, n_train=len(train), n_validation=len(validation),
                        eval_split=eval_split, seed=seed, models=",".join(spec.name for spec, _ in models),
                        init_requested=init_requested, device=device, platform=platform,
                        config_json=json.dumps(config, sort_keys=True), versions_json=json.dumps(versions, sort_keys=True))
            s.add(run)
            s.flush()
            ids = {}
            for pos, (spec, hp) in enumerate(models):
                rm = t.RunModel(run_id=run.id, position=pos, name=spec.name, hub_id=spec.hub_id, model_type=spec.type,
                                status="pending", hyperparams_json=json.dumps(hp, sort_keys=True))
                s.add(rm)
                s.flush()
                ids[spec.name] = rm.id
            s.add_all(_example_row(run.id, "train", i, ex) for i, ex in enumerate(train))
            s.add_all(_example_row(run.id, "validation", i, ex) for i, ex in enumerate(validation))
            return NewRun(run.id, ids)

    @retry_locked
    def model_built(self, run_model_id: int, *, init: str, note: str, parameters: int, vocab_size: int,
                    hyperparams: dict) -> None:
        with self.session() as s:
            s.execute(update(t.RunModel).where(t.RunModel.id == run_model_id).values(
                status="running", init=init, init_note=note, parameters=parameters, vocab_size=vocab_size,
                hyperparams_json=json.dumps(hyperparams, sort_keys=True)))

    @retry_locked
    def record_epoch(self, run_model_id: int, steps: Iterable[Any], epoch: int, train_loss: float,
                     val_loss: float | None, dev: tuple[float, float] | None = None) -> None:
        """The steps of one epoch, its losses and its development-slice score, in one transaction."""
        with self.session() as s:
            s.add_all(_step_rows(run_model_id, steps))
            s.add(t.EpochLoss(run_model_id=run_model_id, epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                              dev_accuracy=dev[0] if dev else None, dev_format=dev[1] if dev else None))

    @retry_locked
    def model_finished(self, run_model_id: int, *, steps: int, final_loss: float, mean_loss: float,
                       final_val_loss: float | None, seconds: float, tokens_seen: int, checkpoint_path: str,
                       chosen_epoch: int | None = None, peak_rss_mb: float | None = None,
                       kept_average: bool | None = None, average_dev: Sequence[float] | None = None) -> None:
        with self.session() as s:
            s.execute(update(t.RunModel).where(t.RunModel.id == run_model_id).values(
                status="completed", steps=steps, final_loss=final_loss, mean_loss=mean_loss,
                final_val_loss=final_val_loss, train_seconds=seconds, tokens_seen=tokens_seen,
                checkpoint_path=checkpoint_path, chosen_epoch=chosen_epoch, peak_rss_mb=peak_rss_mb,
                kept_average=kept_average, average_dev_accuracy=average_dev[0] if average_dev else None,
                average_dev_format=average_dev[1] if average_dev else None))

    @retry_locked
    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   train_seconds: float | None = None) -> None:
        """Mark the run (and any model not completed) with its final status."""
        with self.session() as s:
            s.execute(update(t.Run).where(t.Run.id == run_id).values(
                status=status, error=error, finished_at=now(), train_seconds=train_seconds))
            if status != "completed":
                _mark_unfinished_models(s, run_id, status)

    @retry_locked
    def set_checkpoint_dir(self, run_id: int, path: str) -> None:
        with self.session() as s:
            s.execute(update(t.Run).where(t.Run.id == run_id).values(checkpoint_dir=path))

    @retry_locked
    def reap_dead_runs(self, alive) -> list[int]:
        """Mark `interrupted` every running run whose process is gone (`alive(host, pid, start)` is
        False: killed with SIGKILL, out of memory, power loss). Returns their ids."""
        reaped = []
        with self.session() as s:
            # FOR UPDATE (PostgreSQL): a run resumed or finished meanwhile is read again once its lock is
            # free; in id order, so that two processes reaping at once cannot deadlock
            for r in s.scalars(select(t.Run).where(t.Run.status == "running").order_by(t.Run.id)
                               .with_for_update()).all():
                if alive(r.host, r.pid, r.process_start) is False:
                    reaped.append(r.id)
                    r.status, r.finished_at = "interrupted", now()
                    r.error = f"its process (pid {r.pid} on {r.host}) ended without finishing it: killed or crashed"
                    r.lease_until = None  # a `wmg work` lease of a dead process: free at once, not when it runs out
                    _mark_unfinished_models(s, r.id, "interrupted")
        return reaped

    @retry_locked
    def restart_run(self, run_id: int, owner: tuple[str, int, int | None]) -> None:
        """A resumed run: running again, owned by this process, its resume counted."""
        host, pid, start = owner
        with self.session() as s:
            r = s.get(t.Run, run_id, with_for_update=True)
            r.status, r.error, r.finished_at = "running", None, None
            r.host, r.pid, r.process_start, r.resumes = host, pid, start, (r.resumes or 0) + 1
            _mark_unfinished_models(s, run_id, "pending")

    @retry_locked
    def record_steps(self, run_model_id: int, steps: Iterable[Any]) -> None:
        """Steps of an epoch cut short by an interrupt (the rest come with the epoch's end after a resume)."""
        with self.session() as s:
            s.add_all(_step_rows(run_model_id, steps))

    @retry_locked
    def truncate_training(self, run_model_id: int, step: int, epochs: int) -> None:
        """Forget steps and epochs after a checkpoint (written before a crash kept the checkpoint from following)."""
        from sqlalchemy import delete

        with self.session() as s:
            s.execute(delete(t.TrainStep).where(t.TrainStep.run_model_id == run_model_id, t.TrainStep.step > step))
            s.execute(delete(t.EpochLoss).where(t.EpochLoss.run_model_id == run_model_id, t.EpochLoss.epoch > epochs))

    @retry_locked
    def get_run(self, run_id: int) -> RunInfo:
        with self.session(write=False) as s:
            return _run_info(s, _existing(s, t.Run, run_id))

    @retry_locked
    def create_study(self, *, data_path: str, data_sha256: str, folds: int, seeds: Sequence[int],
                     config: dict) -> int:
        with self.session() as s:
            st = t.Study(created_at=now(), data_path=data_path, data_sha256=data_sha256, folds=folds,
                         seeds_json=json.dumps(list(seeds)), config_json=json.dumps(config, sort_keys=True))
            s.add(st)
            s.flush()
            return st.id

    @retry_locked
    def get_study(self, study_id: int) -> StudyInfo:
        with self.session(write=False) as s:
            st = _existing(s, t.Study, study_id)
            runs = s.scalars(select(t.Run).where(t.Run.study_id == study_id).order_by(t.Run.id)).all()
            seeds = json.loads(st.seeds_json)
            infos = sorted((_run_info(s, r) for r in runs),
                           key=lambda r: (seeds.index(r.seed) if r.seed in seeds else len(seeds), r.fold or 0, r.id))
            return StudyInfo(st.id, st.created_at, st.data_path, st.data_sha256, st.folds, seeds,
                             json.loads(st.config_json), infos)

    @retry_locked
    def claim_study_run(self, study_id: int, lease: Lease, fold: int | None = None) -> Claim:
        """In one transaction, under the study's row lock (PostgreSQL: FOR UPDATE; SQLite: the write
        lock), the first (seed, fold) of the study this worker may make: one with no run yet, or
        one whose run is unfinished and whose lease is free or ran out. Taking a run marks it this
        worker's (and `interrupted` if it was running under an expired lease: its worker is gone).
        A fold without a run is not recorded until the worker's `create_run`; two workers that pick
        the same one meet there, and the second claims again."""
        with self.session() as s:
            st = s.execute(select(t.Study).where(t.Study.id == study_id).with_for_update()).scalar_one_or_none()
            if st is None:
                raise StoreError(f"no study with id {study_id}")
            runs = {(r.seed, r.fold): r for r in s.scalars(select(t.Run).where(t.Run.study_id == study_id)
                                                            .order_by(t.Run.id).with_for_update())}
            waiting, at = 0, now()
            for seed in json.loads(st.seeds_json):
                for f in range(1, st.folds + 1):
                    if fold is not None and f != fold:
                        continue
                    r = runs.get((seed, f))
                    if r is None:
                        return Claim(seed, f)
                    if is_compared(r.status, _heldout_status(s, r.id)):
                        continue
                    if r.lease_owner == lease.owner:  # ours already (a claim after a lost race, say)
                        return Claim(seed, f, r.id)
                    if lease_held(r.lease_until, at) or (r.status == "running" and r.lease_until is None):
                        waiting += 1  # a live worker's, or a plain `wmg train --study` process's
                        continue
                    taken = r.lease_owner if r.status in ("running", "interrupted") else None
                    if r.status == "running":
                        r.status, r.finished_at = "interrupted", at
                        r.error = f"its worker {r.lease_owner} stopped renewing its lease: killed, crashed or cut off"
                        _mark_unfinished_models(s, r.id, "interrupted")
                    r.lease_owner, r.lease_until = lease.owner, lease.until()
                    return Claim(seed, f, r.id, taken_from=taken)
            return Claim(waiting=waiting, done=waiting == 0)

    @retry_locked
    def renew_lease(self, study_id: int, seed: int, fold: int, lease: Lease) -> bool:
        """Push this worker's lease on (seed, fold) forward. False when another worker holds the run
        now (ours ran out and was taken over); True otherwise, also while the run is not made yet."""
        with self.session() as s:
            r = s.execute(select(t.Run).where(t.Run.study_id == study_id, t.Run.seed == seed, t.Run.fold == fold)
                          .with_for_update()).scalar_one_or_none()
            if r is None:
                return True
            if r.lease_owner != lease.owner:
                return False
            r.lease_until = lease.until()
            return True

    @retry_locked
    def release_lease(self, study_id: int, seed: int, fold: int, lease: Lease) -> None:
        """Give up this worker's lease on (seed, fold) at once (finished, stopped or failed), so that
        another worker need not wait for it to run out."""
        with self.session() as s:
            s.execute(update(t.Run).where(t.Run.study_id == study_id, t.Run.seed == seed, t.Run.fold == fold,
                                          t.Run.lease_owner == lease.owner).values(lease_until=None))

    @retry_locked
    def list_runs(self) -> list[RunInfo]:
        with self.session(write=False) as s:
            return [_run_info(s, r) for r in s.scalars(select(t.Run).order_by(t.Run.id)).all()]

    @retry_locked
    def run_examples(self, run_id: int, split: str) -> list[StoredExample]:
        with self.session(write=False) as s:
            rows = s.scalars(select(t.Example).where(t.Example.run_id == run_id, t.Example.split == split,
                                                     t.Example.evaluation_id.is_(None))
                             .order_by(t.Example.position)).all()
            return [_stored_example(x) for x in rows]

    @retry_locked
    def train_steps(self, run_model_id: int) -> list[StepRecord]:
        with self.session(write=False) as s:
            return [StepRecord(*r) for r in s.execute(
                select(t.TrainStep.step, t.TrainStep.epoch, t.TrainStep.loss, t.TrainStep.lr)
                .where(t.TrainStep.run_model_id == run_model_id).order_by(t.TrainStep.step)).all()]

    @retry_locked
    def create_evaluation(self, run_id: int, source: str, config: dict,
                          external: Sequence[DataExample] | None = None) -> NewEvaluation:
        """A `running` evaluation and the examples it will predict on (another file's are stored with it)."""
        with self.session() as s:
            _existing(s, t.Run, run_id)
            ev = t.Evaluation(run_id=run_id, created_at=now(), status="running", source=source, n_examples=0,
                              config_json=json.dumps(config, sort_keys=True))
            s.add(ev)
            s.flush()
            if external is not None:
                rows = [_example_row(run_id, "external", i, ex, evaluation_id=ev.id) for i, ex in enumerate(external)]
                s.add_all(rows)
                s.flush()
            else:
                rows = s.scalars(select(t.Example).where(t.Example.run_id == run_id, t.Example.split == "validation",
                                                         t.Example.evaluation_id.is_(None))
                                 .order_by(t.Example.position)).all()
            ev.n_examples = len(rows)
            return NewEvaluation(ev.id, [_stored_example(x) for x in rows])

    @retry_locked
    def complete_evaluation(self, evaluation_id: int, predictions: Sequence[PredictionRow],
                            agreements: Sequence[AgreementRow], seconds: float, report_path: str | None,
                            baselines: Sequence[BaselineRow] = (), peak_rss_mb: float | None = None) -> None:
        """Every prediction, agreement and baseline prediction of the evaluation, and its summary, in one
        transaction."""
        with self.session() as s:
            s.add_all(t.BaselinePrediction(evaluation_id=evaluation_id, example_id=b.example_id, baseline=b.baseline,
                                           predicted_type=b.predicted_type, matches_gold=b.matches_gold)
                      for b in baselines)
            ev = s.get(t.Evaluation, evaluation_id, with_for_update=True)
            model_ids = dict(s.execute(select(t.RunModel.name, t.RunModel.id).where(t.RunModel.run_id == ev.run_id)).all())
            s.add_all(t.Prediction(
                evaluation_id=evaluation_id, example_id=p.example_id, run_model_id=model_ids[p.model], model=p.model,
                raw_text=p.raw_text, gadget_type=p.gadget_type, location=p.location, explanation=p.explanation,
                normalized_type=p.normalized_type, canonical_label=p.canonical_label,
                fmt_gadget_type=p.format_checks["gadget_type"], fmt_location=p.format_checks["location"],
                fmt_explanation=p.format_checks["explanation"], format_ok=all(p.format_checks.values()),
                matches_gold=p.matches_gold, new_tokens=p.new_tokens, generation_seconds=p.generation_seconds,
                rouge1_f1=p.rouge1_f1, rouge_l_f1=p.rouge_l_f1, location_in_excerpt=p.location_in_excerpt,
            ) for p in predictions)
            s.add_all(t.Agreement(
                evaluation_id=evaluation_id, example_id=a.example_id, n_models=a.n_models,
                full_agreement=a.full_agreement, unique_types_json=json.dumps(a.unique_types),
                unique_normalized_json=json.dumps(a.unique_normalized), n_unique_normalized=len(a.unique_normalized),
                majority_type=a.majority_type, majority_normalized=a.majority_normalized,
                majority_count=a.majority_count, majority_matches_gold=a.majority_matches_gold,
            ) for a in agreements)
            full = sum(a.full_agreement for a in agreements)
            ev.status = "completed"
            ev.finished_at = now()
            ev.full_agreements = full
            ev.full_agreement_rate = full / len(agreements) if agreements else None
            ev.seconds = seconds
            ev.report_path = report_path
            ev.peak_rss_mb = peak_rss_mb

    @retry_locked
    def fail_evaluation(self, evaluation_id: int, error: str) -> None:
        with self.session() as s:
            s.execute(update(t.Evaluation).where(t.Evaluation.id == evaluation_id).values(
                status="failed", error=error, finished_at=now()))

    @retry_locked
    def get_evaluation(self, evaluation_id: int) -> EvaluationInfo:
        with self.session(write=False) as s:
            return _eval_info(s, _existing(s, t.Evaluation, evaluation_id))

    @retry_locked
    def count_rows(self, table: str) -> int:
        with self.session(write=False) as s:
            model = {m.__tablename__: m for m in t.Base.__subclasses__()}[table]
            return s.scalar(select(func.count()).select_from(model))

    @retry_locked
    def fill_missing_rouge(self, evaluation_ids: Sequence[int]) -> int:
        """Score predictions stored before ROUGE was recorded (older runs); returns how many were filled."""
        from ..rouge import rouge_f1

        with self.session() as s:
            rows = s.execute(
                select(t.Prediction, t.Example.gold_output).join(t.Example, t.Example.id == t.Prediction.example_id)
                .where(t.Prediction.evaluation_id.in_(list(evaluation_ids)), t.Prediction.rouge1_f1.is_(None))
                .with_for_update(of=t.Prediction)
            ).all()
            for pred, gold in rows:
                pred.rouge1_f1, pred.rouge_l_f1 = rouge_f1(pred.raw_text, gold)
            return len(rows)

    @retry_locked
    def evaluation_items(self, evaluation_id: int) -> list[EvaluationItem]:
        with self.session(write=False) as s:
            _existing(s, t.Evaluation, evaluation_id)
            rows = s.execute(
                select(t.Example, t.Agreement.full_agreement, t.Prediction.model, t.Prediction.raw_text)
                .join(t.Agreement, (t.Agreement.example_id == t.Example.id) & (t.Agreement.evaluation_id == evaluation_id))
                .join(t.Prediction, (t.Prediction.example_id == t.Example.id)
                      & (t.Prediction.evaluation_id == evaluation_id))
                .join(t.RunModel, t.RunModel.id == t.Prediction.run_model_id)
                .order_by(t.Example.position, t.RunModel.position)).all()
            items: dict[int, EvaluationItem] = {}
            for x, full, model, raw in rows:
                it = items.get(x.id)
                if it is None:
                    it = items[x.id] = EvaluationItem(x.id, x.position, x.instruction, x.input, x.gold_output, bool(full), {})
                it.outputs[model] = raw
            return list(items.values())

    @retry_locked
    def save_judgments(self, evaluation_id: int, judge: dict, config: dict, rows: Sequence[JudgmentRow],
                       seconds: float, replace: bool = False) -> int:
        """A new judgment set with all its verdicts, in one transaction. With `replace`, the
        judge's earlier sets on this evaluation are deleted in the same transaction."""
        with self.session() as s:
            # PostgreSQL: one judge run at a time writes an evaluation's sets (two --replace runs would both
            # delete the old sets, then both add theirs)
            s.get(t.Evaluation, evaluation_id, with_for_update=True)
            if replace:
                for old in s.scalars(select(t.JudgmentSet).where(t.JudgmentSet.evaluation_id == evaluation_id,
                                                                 t.JudgmentSet.judge == judge["name"])).all():
                    s.delete(old)
                s.flush()
            js = t.JudgmentSet(evaluation_id=evaluation_id, judge=judge["name"], judge_version=judge["version"],
                               model=judge.get("model"), prompt_hash=judge.get("prompt_hash"),
                               config_json=json.dumps(config, sort_keys=True), created_at=now(), seconds=seconds)
            s.add(js)
            s.flush()
            s.add_all(t.Judgment(set_id=js.id, example_id=r.example_id, kind=r.kind, model_a=r.model_a,
                                 model_b=r.model_b, verdict=r.verdict, explanation=r.explanation,
                                 confidence=r.confidence) for r in rows)
            return js.id

    @retry_locked
    def judgment_sets(self, evaluation_id: int, judge: str | None = None) -> list[JudgmentSetInfo]:
        with self.session(write=False) as s:
            q = select(t.JudgmentSet).where(t.JudgmentSet.evaluation_id == evaluation_id)
            if judge:
                q = q.where(t.JudgmentSet.judge == judge)
            return [JudgmentSetInfo(j.id, j.judge, j.judge_version, j.model, j.created_at)
                    for j in s.scalars(q.order_by(t.JudgmentSet.id)).all()]

    @retry_locked
    def overall_verdicts(self, set_id: int) -> dict[int, str]:
        with self.session(write=False) as s:
            return dict(s.execute(select(t.Judgment.example_id, t.Judgment.verdict)
                                  .where(t.Judgment.set_id == set_id, t.Judgment.kind == "overall")).all())

    @retry_locked
    def set_judgments(self, set_id: int) -> list[JudgmentRow]:
        with self.session(write=False) as s:
            return [JudgmentRow(j.example_id, j.kind, j.model_a, j.model_b, j.verdict, j.explanation, j.confidence)
                    for j in s.scalars(select(t.Judgment).where(t.Judgment.set_id == set_id).order_by(t.Judgment.id))]

    @retry_locked
    def save_annotation(self, evaluation_id: int, example_id: int, annotator: str, label: str,
                        note: str | None) -> None:
        """Insert or update one person's label for one example (its own transaction, so a session can stop anywhere)."""
        with self.session() as s:
            s.get(t.Evaluation, evaluation_id, with_for_update=True)  # PostgreSQL: one writer of its labels at a time
            a = s.scalars(select(t.Annotation).where(t.Annotation.evaluation_id == evaluation_id,
                                                     t.Annotation.example_id == example_id,
                                                     t.Annotation.annotator == annotator)).first()
            if a is None:
                s.add(t.Annotation(evaluation_id=evaluation_id, example_id=example_id, annotator=annotator, label=label,
                                   note=note or None, created_at=now()))
            else:
                a.label, a.note, a.created_at = label, note or None, now()

    @retry_locked
    def annotations(self, evaluation_id: int, annotator: str | None = None) -> list[AnnotationRecord]:
        with self.session(write=False) as s:
            q = (select(t.Annotation, t.Example.position).join(t.Example, t.Example.id == t.Annotation.example_id)
                 .where(t.Annotation.evaluation_id == evaluation_id))
            if annotator:
                q = q.where(t.Annotation.annotator == annotator)
            return [AnnotationRecord(a.evaluation_id, a.example_id, pos, a.annotator, a.label, a.note or "")
                    for a, pos in s.execute(q.order_by(t.Example.position, t.Annotation.annotator)).all()]


# ---------------------------------------------------------------- converters
_NAMES = {"runs": "run", "studies": "study", "evaluations": "evaluation"}


def _datetime(value: Any, table: str, column: str) -> datetime:
    """A timestamp as an export writes it (SQLite's text form) back into a datetime."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise StoreError(f"{table}.{column}: {value!r} is not a timestamp") from None


def _existing(s, table, id_: int):
    """The row with this id, or one line saying there is none ("no run with id 7")."""
    row = s.get(table, id_)
    if row is None:
        raise StoreError(f"no {_NAMES[table.__tablename__]} with id {id_}")
    return row
def _rate(flag):
    """The share of rows where a boolean column is true, in floating point on every dialect
    (PostgreSQL has no AVG of a boolean, and its AVG of an integer is NUMERIC)."""
    return func.avg(cast(cast(flag, Integer), Float))


def _model_info(m: t.RunModel) -> ModelInfo:
    return ModelInfo(m.id, m.name, m.hub_id, m.model_type, m.position, m.status, m.init, m.init_note,
                     m.parameters, m.vocab_size, json.loads(m.hyperparams_json), m.steps, m.final_loss,
                     m.mean_loss, m.final_val_loss, m.train_seconds, m.checkpoint_path, m.chosen_epoch, m.peak_rss_mb,
                     m.kept_average, m.average_dev_accuracy, m.average_dev_format)


def _eval_info(s, e: t.Evaluation) -> EvaluationInfo:
    rows = s.execute(
        select(t.Prediction.model, _rate(t.Prediction.format_ok), _rate(t.Prediction.matches_gold))
        .where(t.Prediction.evaluation_id == e.id).group_by(t.Prediction.model)
    ).all()
    base = s.execute(select(t.BaselinePrediction.baseline, _rate(t.BaselinePrediction.matches_gold))
                     .where(t.BaselinePrediction.evaluation_id == e.id).group_by(t.BaselinePrediction.baseline)).all()
    is_open = t.Example.instruction_form == "open"
    open_rows = s.execute(
        select(t.Prediction.model, func.count(), _rate(t.Prediction.matches_gold))
        .join(t.Example, t.Example.id == t.Prediction.example_id)
        .where(t.Prediction.evaluation_id == e.id, is_open).group_by(t.Prediction.model)).all()
    open_base = s.execute(
        select(t.BaselinePrediction.baseline, _rate(t.BaselinePrediction.matches_gold))
        .join(t.Example, t.Example.id == t.BaselinePrediction.example_id)
        .where(t.BaselinePrediction.evaluation_id == e.id, is_open).group_by(t.BaselinePrediction.baseline)).all()
    return EvaluationInfo(e.id, e.run_id, e.created_at, e.status, e.source, e.n_examples, e.full_agreements,
                          e.full_agreement_rate, e.report_path, e.seconds, e.error,
                          {m: float(f) for m, f, _ in rows}, {m: float(g) for m, _, g in rows},
                          {b: float(dict(base)[b]) for b in in_order(dict(base))}, max((n for _, n, _ in open_rows), default=0),
                          {**{m: float(g) for m, _, g in open_rows}, **{b: float(g) for b, g in open_base}},
                          json.loads(e.config_json), e.peak_rss_mb)


def _latest_eval(s, run_id: int) -> t.Evaluation | None:
    return s.scalars(select(t.Evaluation).where(t.Evaluation.run_id == run_id)
                     .order_by(t.Evaluation.id.desc()).limit(1)).first()


def _heldout_status(s, run_id: int) -> str | None:
    """The status of the run's comparison on its own held-out split: "completed" if any completed,
    else that of the latest one (None: none yet). A comparison on another file (`wmg compare
    --data`) is not the run's own and leaves a study's fold as it was."""
    rows = s.scalars(select(t.Evaluation.status).where(t.Evaluation.run_id == run_id, t.Evaluation.source == "validation")
                     .order_by(t.Evaluation.id.desc())).all()
    return "completed" if "completed" in rows else (rows[0] if rows else None)


def _run_info(s, r: t.Run) -> RunInfo:
    models = s.scalars(select(t.RunModel).where(t.RunModel.run_id == r.id).order_by(t.RunModel.position)).all()
    ev = _latest_eval(s, r.id)
    return RunInfo(r.id, r.created_at, r.finished_at, r.status, r.data_path, r.data_sha256, r.examples_requested,
                   r.n_train, r.n_validation, r.eval_split, r.seed, r.init_requested, r.device, r.platform,
                   json.loads(r.config_json), json.loads(r.versions_json), r.train_seconds, r.error,
                   [_model_info(m) for m in models], _eval_info(s, ev) if ev else None,
                   checkpoint_dir=r.checkpoint_dir, resumes=r.resumes or 0, host=r.host, pid=r.pid,
                   study_id=r.study_id, fold=r.fold, lease_owner=r.lease_owner, lease_until=r.lease_until,
                   heldout_status=_heldout_status(s, r.id))


def _example_row(run_id: int, split: str, position: int, ex: DataExample, evaluation_id: int | None = None):
    gold = ex.gold_type
    return t.Example(run_id=run_id, evaluation_id=evaluation_id, split=split, position=position,
                     source_line=ex.index, instruction=ex.instruction, input=ex.input, gold_output=ex.output,
                     gold_type=gold, gold_normalized=normalize_type(gold or ""),
                     instruction_form=instruction_form(ex.instruction), excerpt_words=len(ex.input.split()))


def _step_rows(run_model_id: int, steps: Iterable[Any]) -> list[t.TrainStep]:
    return [t.TrainStep(run_model_id=run_model_id, step=st.step, epoch=st.epoch, loss=st.loss, lr=st.lr,
                        tokens=st.tokens) for st in steps]


def _mark_unfinished_models(s, run_id: int, status: str) -> None:
    """Every model of the run that has not completed takes the run's new status."""
    s.execute(update(t.RunModel).where(t.RunModel.run_id == run_id, t.RunModel.status != "completed")
              .values(status=status))


def _stored_example(x: t.Example) -> StoredExample:
    return StoredExample(x.id, x.split, x.position, x.source_line, x.instruction, x.input, x.gold_output, x.gold_type)
