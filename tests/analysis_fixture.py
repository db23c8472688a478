"""A results store with known predictions, built through the store's own write path.

Run 1: two models (m1, m2) on 4 examples; run 2: three models (a, b, c) on 5.
Every figure the analysis tests expect is worked out by hand in test_analysis.py.
"""
from dataclasses import dataclass

from wmg.data import Example
from wmg.parse import normalize_type
from wmg.pipeline import example_rows
from wmg.store import BaselineRow, Store

RW, AR, CF = "ReadWrite gadget", "Arithmetic/Computation gadget", "Control-Flow gadget"
IO, TS, CO = "IO and Side-Effect gadget", "Timing/Synchronization gadget", "Composition gadget"
CAT = "Identify weird machine {} gadgets in the excerpt. Report gadget_type, location and explanation."
OPEN = "Identify any weird machine gadget in the excerpt. Report gadget_type, location and explanation."


@dataclass(frozen=True)
class Spec:  # what Store.create_run reads of a model spec
    name: str
    hub_id: str = "local"
    type: str = "seq2seq"


def out(label, loc="the MOV rung", expl="It could be misused."):
    return f"gadget_type: {label}; location: {loc}; explanation: {expl}" if label else "garbled output with no fields"


def make_run(db, models, golds, preds, words, forms, epochs=3, seed=1, study_id=None, fold=None, baselines=None):
    """`baselines`: {name: one predicted type per example} for reference baselines, if any."""
    examples = [Example(i, CAT.format("X") if f == "category" else OPEN, " ".join(["word"] * w), out(g))
                for i, (g, w, f) in enumerate(zip(golds, words, forms))]
    train = [Example(100 + i, OPEN, "train " * 12, out(RW)) for i in range(3)]
    store = Store(db)
    run_id, ids = store.create_run(
        data_path="fixture.jsonl", data_sha256="0" * 64, examples_requested=None, eval_split=0.5, seed=seed,
        init_requested="scratch", device="cpu", platform="unix", config={"epochs": epochs}, versions={"wmg": "test"},
        models=[(Spec(m), {"epochs": epochs}) for m in models], train=train, validation=examples,
        study_id=study_id, fold=fold)
    for k, m in enumerate(models):
        hp = {"epochs": epochs, "learning_rate": 1e-3, "micro_batch_size": 8, "grad_accum": 1}
        store.model_built(ids[m], init="scratch", note="fixture", parameters=1000 * (k + 1), vocab_size=100,
                         hyperparams=hp)
        steps = [type("S", (), dict(step=s, epoch=s / 2, loss=3.0 / s, lr=1e-3, tokens=50))() for s in (1, 2)]
        store.record_epoch(ids[m], steps, 1, 2.0, 2.5)
        store.model_finished(ids[m], steps=2, final_loss=1.5 - 0.1 * k, mean_loss=2.0, final_val_loss=2.5,
                            seconds=10.0 * (k + 1), tokens_seen=100, checkpoint_path="/nonexistent")
    store.finish_run(run_id, "completed", None, 30.0)
    eval_id, stored = store.create_evaluation(run_id, "validation", {})
    pred_rows, agr_rows = [], []
    for x, row in zip(stored, preds):
        texts = {m: out(t) for m, t in zip(models, row)}
        # no gold output: ROUGE is left for `wmg analyze models` to fill in on demand
        _, _, rows, agr_row = example_rows(x.id, x.gold_type, texts, {m: (10, 0.1) for m in models})
        pred_rows += rows
        agr_rows.append(agr_row)
    base_rows = [BaselineRow(x.id, name, t, normalize_type(t or "") == normalize_type(x.gold_type or ""))
                 for name, types in (baselines or {}).items() for x, t in zip(stored, types)]
    store.complete_evaluation(eval_id, pred_rows, agr_rows, 1.0, None, base_rows)
    return run_id, eval_id


def build(db):
    r1 = make_run(db, ["m1", "m2"], [RW, AR, CF, IO],
                  [(RW, RW), (AR, CF), (TS, CF), (IO, CO)],
                  words=[10, 20, 30, 40], forms=["category", "open", "category", "open"], epochs=3)
    r2 = make_run(db, ["a", "b", "c"], [RW, RW, TS, CO, CF],
                  [(RW, RW, RW), (TS, RW, RW), (TS, CF, TS), (CO, CO, AR), (None, AR, CF)],
                  words=[50, 60, 70, 80, 90], forms=["open"] * 5, epochs=5)
    return r1, r2
