"""PNG figures of a run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import AnalysisError, Selected, query


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(db, run_id: int, out: Path) -> Path | None:
    plt = _plt()
    models = query(db, "SELECT id, name, init FROM run_models WHERE run_id = :r ORDER BY position", r=run_id)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for m in models:
        steps = query(db, "SELECT epoch, loss FROM train_steps WHERE run_model_id = :m ORDER BY step", m=m["id"])
        if steps:
            line, = ax.plot([s["epoch"] for s in steps], [s["loss"] for s in steps], lw=1, alpha=0.8,
                            label=f"{m['name']} train ({m['init']})")
            drawn = True
            val = query(db, "SELECT epoch, val_loss FROM epoch_losses WHERE run_model_id = :m AND val_loss IS NOT NULL "
                            "ORDER BY epoch", m=m["id"])
            if val:
                ax.plot([v["epoch"] for v in val], [v["val_loss"] for v in val], "o--", color=line.get_color(),
                        label=f"{m['name']} validation")
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="epoch", ylabel="loss (token cross-entropy)", title=f"Run {run_id}: training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / f"run{run_id}_loss_curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_accuracy(db, sel: Selected, out: Path) -> Path:
    import numpy as np

    plt = _plt()
    rows = query(db, "SELECT gold_type, model, accuracy FROM error_by_type WHERE evaluation_id = :e",
                 e=sel.evaluation_id)
    labels = sorted({r["gold_type"] for r in rows})
    acc = {(r["gold_type"], r["model"]): r["accuracy"] for r in rows}
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(sel.models))
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(labels)), 4.5))
    for i, m in enumerate(sel.models):
        ax.bar(x + i * width - 0.4 + width / 2, [acc.get((l, m), 0) or 0 for l in labels], width, label=m)
    ax.set_xticks(x, [l.replace(" gadget", "").replace("/", "/\n") for l in labels], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="gold-type accuracy",
           title=f"Run {sel.run_id}, evaluation {sel.evaluation_id}: accuracy per gold label")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path = out / f"run{sel.run_id}_eval{sel.evaluation_id}_label_accuracy.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(db, sel: Selected, out: Path) -> list[Path]:
    import numpy as np

    plt = _plt()
    from ..parse import CANONICAL_LABELS

    conf = query(db, "SELECT model, gold_label, predicted_label, n FROM confusion WHERE evaluation_id = :e",
                 e=sel.evaluation_id)
    gold = sorted({c["gold_label"] for c in conf})
    pred = [l for l in CANONICAL_LABELS] + ["(other)"]
    short = lambda l: l.replace(" gadget", "")
    paths = []
    for m in sel.models:
        mat = np.zeros((len(gold), len(pred)), dtype=int)
        for c in conf:
            if c["model"] == m and c["predicted_label"] in pred:
                mat[gold.index(c["gold_label"]), pred.index(c["predicted_label"])] += c["n"]
        fig, ax = plt.subplots(figsize=(8, 6))
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(pred)), [short(p) for p in pred], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(gold)), [short(g) for g in gold], fontsize=8)
        for i in range(len(gold)):
            for j in range(len(pred)):
                if mat[i, j]:
                    ax.text(j, i, str(mat[i, j]), ha="center", va="center",
                            color="white" if mat[i, j] > mat.max() / 2 else "black")
        ax.set(xlabel="predicted canonical label", ylabel="gold label",
               title=f"{m}: confusion (run {sel.run_id}, evaluation {sel.evaluation_id})")
        path = out / f"run{sel.run_id}_eval{sel.evaluation_id}_confusion_{m}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def runs_trend(db, out: Path) -> Path | None:
    plt = _plt()
    rows = query(db, "SELECT run_id, model, agreement_rate, gold_accuracy, format_accuracy, examples, epochs "
                     "FROM run_summary WHERE evaluation_id IS NOT NULL ORDER BY run_id")
    if not rows:
        return None
    runs = sorted({r["run_id"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    agree = {r["run_id"]: r["agreement_rate"] for r in rows}
    ax.plot(runs, [agree[r] for r in runs], "k-o", label="full agreement rate")
    for m in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["run_id"], r["gold_accuracy"]) for r in rows if r["model"] == m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--s", label=f"{m} gold-type accuracy")
    ax.set_xticks(runs, [f"{r}\n{next(x['examples'] for x in rows if x['run_id'] == r)} ex" for r in runs],
                  fontsize=8)
    ax.set(ylim=(-0.02, 1.02), xlabel="run (examples)", ylabel="rate", title="Agreement and accuracy across runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "runs_trend.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(db, sel: Sequence[Selected], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"cannot create output folder {out}: {exc.strerror}") from None
    paths: list[Path] = []
    for s in sel:
        p = loss_curves(db, s.run_id, out)
        if p:
            paths.append(p)
        paths.append(label_accuracy(db, s, out))
        paths += confusion(db, s, out)
    p = runs_trend(db, out)
    if p:
        paths.append(p)
    return paths
