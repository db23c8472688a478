"""A run's and a study's hyperparameters are resolved once, when they are recorded: a resumed run
and every later fold of a study build their models from the recorded values, even when wmg's
defaults have changed in between (they did once, mid-study, and a fold's GPT-2 got a copy head
the other folds lacked)."""
import json
import sqlite3

import pytest

import wmg.pipeline as pipeline
from wmg.config import ConfigError, REGISTRY, TrainConfig
from wmg.data import bundled_data
from wmg.device import loader_processes
from wmg.pipeline import TrainOptions, hyperparams, make_study_run, resume_run, start_study, train_run
from wmg.store import Store

QUIET = lambda *a: None  # noqa: E731


def _opts(tmp_path, **kw):
    # the loader processes as `wmg train` sets them (a run continued takes its own process's: device.loader_processes)
    return TrainOptions(data=str(bundled_data()), models="flan-t5-small,distilgpt2", examples=40, tiny=True,
                        checkpoints=str(tmp_path / "ck"), progress=False, overrides={"epochs": 1},
                        workers=loader_processes("unix"), **kw)


def _changed_defaults(monkeypatch):
    """wmg's defaults as a later version might have them: another learning rate, two epochs."""
    real = pipeline.defaults_for
    monkeypatch.setattr(pipeline, "defaults_for",
                        lambda spec, init: real(spec, init).with_(learning_rate=0.0123, epochs=2))


def _built(db, run_id):
    with sqlite3.connect(db) as conn:
        return {name: (json.loads(hp), steps) for name, hp, steps in conn.execute(
            "SELECT name, hyperparams_json, steps FROM run_models WHERE run_id = ?", (run_id,))}


def test_a_later_fold_of_a_study_is_built_from_the_hyperparameters_the_study_recorded(tmp_path, monkeypatch):
    db = str(tmp_path / "r.db")
    store = Store(db)
    opts = _opts(tmp_path, folds=3)
    sid = start_study(store, opts, 3, [7], {"max_new_tokens": 8, "precision": "fp32", "device": "cpu",
                                             "no_repeat_ngram_size": 0, "baseline": False})
    study = store.get_study(sid)
    recorded = study.config["train"]["model_configs"]
    assert set(recorded) == {"flan-t5-small", "distilgpt2"}
    assert {r["init"] for r in recorded.values()} == {"scratch"}
    assert all(r["hyperparams"]["epochs"] == 1 for r in recorded.values())  # the command line's override is in
    _changed_defaults(monkeypatch)
    run_id = make_study_run(store, study, 7, 2, None, QUIET, False)
    built = _built(db, run_id)
    for name, (hp, steps) in built.items():
        want = dict(recorded[name]["hyperparams"], seed=7)
        assert hp == want, name
        assert hp["learning_rate"] != 0.0123 and hp["epochs"] == 1
    # without the record (a study of an older wmg), the run would have taken the changed defaults
    assert hyperparams(REGISTRY["distilgpt2"], "scratch", _opts(tmp_path)).learning_rate == 0.0123


@pytest.mark.parametrize("older", [False, True], ids=["recorded-with-the-run", "older-run-from-its-models-rows"])
def test_a_resumed_model_that_never_started_is_built_as_recorded(tmp_path, monkeypatch, older):
    db = str(tmp_path / "r.db")
    store = Store(db)
    real = pipeline.train_model

    def fails_at_gpt2(store, run_id, info, rm_id, spec, *a, **k):
        if spec.name == "distilgpt2":
            raise RuntimeError("the machine went away")
        return real(store, run_id, info, rm_id, spec, *a, **k)

    monkeypatch.setattr(pipeline, "train_model", fails_at_gpt2)
    with pytest.raises(RuntimeError):
        train_run(store, _opts(tmp_path), QUIET)
    monkeypatch.setattr(pipeline, "train_model", real)
    before = _built(db, 1)
    assert before["distilgpt2"][1] is None  # never trained
    if older:  # a run recorded before runs kept model_configs in their options
        with sqlite3.connect(db) as conn:
            cfg = json.loads(conn.execute("SELECT config_json FROM runs WHERE id = 1").fetchone()[0])
            del cfg["model_configs"]
            conn.execute("UPDATE runs SET config_json = ? WHERE id = 1", (json.dumps(cfg),))
    _changed_defaults(monkeypatch)
    assert resume_run(store, 1, QUIET, progress=False).status == "completed"
    after = _built(db, 1)
    assert after["distilgpt2"][0] == before["distilgpt2"][0]
    assert after["distilgpt2"][0]["learning_rate"] != 0.0123 and after["distilgpt2"][1] > 0


def test_recorded_hyperparameters_this_wmg_cannot_build_are_refused_in_one_line():
    hp = hyperparams(REGISTRY["flan-t5-small"], "scratch", TrainOptions(data="x", models="flan-t5-small")).to_dict()
    assert TrainConfig.recorded("flan-t5-small", hp).to_dict() == hp
    with pytest.raises(ConfigError, match="warp_factor are unknown to this wmg") as exc:
        TrainConfig.recorded("flan-t5-small", dict(hp, warp_factor=9))
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="incomplete"):
        TrainConfig.recorded("flan-t5-small", {k: v for k, v in hp.items() if k != "learning_rate"})
    # a field added since the record takes its dataclass default (the behaviour before it existed)
    assert TrainConfig.recorded("m", {k: v for k, v in hp.items() if k != "optimizer"}).optimizer == "adamw"


def test_a_model_recorded_for_one_init_is_not_built_from_another():
    opts = TrainOptions(data="x", models="flan-t5-small",
                        model_configs={"flan-t5-small": {"init": "scratch", "hyperparams": {}}})
    with pytest.raises(ConfigError, match="recorded for scratch init, but this machine gives it pretrained"):
        hyperparams(REGISTRY["flan-t5-small"], "pretrained", opts)
