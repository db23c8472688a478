"""Run configurations in TOML files: `wmg train --config` and `wmg show --format toml`."""
import shutil
import tomllib

import pytest
from click.testing import CliRunner

from wmg.cli import main
from wmg.store import Store

TINY = ["--tiny", "--epochs", "2", "--batch-size", "4", "--grad-accum", "1", "--examples", "all", "--eval-split", "0.25",
        "--no-progress", "--no-show-examples", "--platform", "windows", "--no-compare"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def losses(db, run_id):
    store = Store(db)
    return [(m.name, tuple(store.train_steps(m.id))) for m in store.get_run(run_id).models]


def split_of(db, run_id):
    return [[x.source_line for x in Store(db).run_examples(run_id, split)] for split in ("train", "validation")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny run with options off their defaults (seed, dropout, learning rate, label weight, unlikelihood)."""
    work = tmp_path_factory.mktemp("config")
    db, data = str(work / "results.db"), str(work / "data.jsonl")
    shutil.copy(__import__("conftest").SMALL, data)
    r = invoke("train", "--data", data, "--db", db, "--checkpoints", work / "ck", *TINY, "--seed", "7",
               "--dropout", "0.1", "--lr", "3e-3", "--type-loss-weight", "2", "--unlikelihood", "0.5")
    assert r.exit_code == 0, r.output
    return work, db, data


def test_the_printed_config_trains_the_run_again(first_run):
    work, db, data = first_run
    r = invoke("show", "--run-id", 1, "--db", db, "--format", "toml")
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(r.output)
    assert doc["seed"] == 7 and doc["dropout"] == 0.1 and doc["learning_rate"] == 3e-3 and doc["tiny"] is True
    assert doc["data"] == data and len(doc["data_sha256"]) == 64 and doc["eval_split"] == 0.25
    assert doc["batch_size"] == 4 and doc["type_loss_weight"] == 2.0  # TrainConfig's micro_batch_size
    assert doc["unlikelihood"] == 0.5
    (work / "run.toml").write_text(r.output)

    r = invoke("train", "--config", work / "run.toml", "--db", db, "--no-progress", "--no-show-examples",
               "--no-compare")
    assert r.exit_code == 0, r.output
    store = Store(db)
    first, again = store.get_run(1), store.get_run(2)
    assert again.seed == 7 and again.data_sha256 == first.data_sha256
    assert [m.hyperparams for m in again.models] == [m.hyperparams for m in first.models]
    assert split_of(db, 2) == split_of(db, 1)
    steps = losses(db, 1)
    assert [name for name, _ in steps] == ["flan-t5-small", "distilgpt2"] and all(len(s) > 4 for _, s in steps)
    assert losses(db, 2) == steps


def test_the_command_line_overrides_the_config(first_run, tmp_path):
    work, db, data = first_run
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{data}"\ntiny = true\nepochs = 2\nbatch-size = 4\nmodels = "distilgpt2"\n'
                   'eval_split = 0.25\nplatform = "windows"\ncompare = false\n')
    out = tmp_path / "db.sqlite"
    r = invoke("train", "--config", cfg, "--db", out, "--epochs", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    run = Store(str(out)).get_run(1)
    assert [m.name for m in run.models] == ["distilgpt2"]
    assert run.models[0].hyperparams["epochs"] == 1 and run.models[0].hyperparams["micro_batch_size"] == 4
    assert run.latest_evaluation is None  # compare = false from the file


@pytest.mark.parametrize("text, message", [
    ("learning_rat = 0.01\n", "unknown key 'learning_rat' (not a `wmg train` option)"),
    ("resume = 3\n", "key 'resume' is not allowed in a config"),
    ("epochs = [1\n", "is not valid TOML"),
    ("epochs = 0\n", "0 is not in the range x>=1"),
    ("lr = 0.1\nlearning_rate = 0.2\n", "option 'learning_rate' is given twice"),
])
def test_a_bad_config_is_one_line_naming_the_problem(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    db = tmp_path / "results.db"
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--db", str(db), "--tiny"])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not db.exists()  # nothing stored


def test_a_config_for_other_data_is_refused(first_run, tmp_path):
    work, db, data = first_run
    changed = tmp_path / "data.jsonl"
    changed.write_text(open(data).read().replace(" the ", " a ", 1))
    r = invoke("show", "--run-id", 1, "--db", db, "--format", "toml")
    cfg = tmp_path / "run.toml"
    cfg.write_text(r.output.replace(f'data = "{data}"', f'data = "{changed}"'))
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 1 and "is not the data the config was written for" in r.output
    assert [l for l in r.output.splitlines() if "Error" in l] == [r.output.splitlines()[-1]]
    assert "Traceback" not in r.output and not (tmp_path / "r.db").exists()
