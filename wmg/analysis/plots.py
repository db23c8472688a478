"""PNG figures of a run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..store import Store
from . import AnalysisError, Selected


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write at the figures' common resolution and free the figure."""
    plt = _plt()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(store: Store, run_id: int, out: Path) -> Path | None:
    plt = _plt()
    models = store.query("SELECT id, name, init FROM run_models WHERE run_id = :r ORDER BY position", r=run_id)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for m in models:
        steps = store.query("SELECT epoch, loss FROM train_steps WHERE run_model_id = :m ORDER BY step", m=m["id"])
        if steps:
            line, = ax.plot([s["epoch"] for s in steps], [s["loss"] for s in steps], lw=1, alpha=0.8,
                            label=f"{m['name']} train ({m['init']})")
            drawn = True
            val = store.query("SELECT epoch, val_loss FROM epoch_losses WHERE run_model_id = :m AND val_loss IS NOT NULL "
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
    return _save(fig, path)


def _error_bars(rates_counts):
    """Wilson intervals as matplotlib's (below, above) distances."""
    from ..stats import wilson

    below, above = [], []
    for k, n in rates_counts:
        low, high = wilson(k, n) if n else (0.0, 0.0)
        rate = k / n if n else 0.0
        below.append(rate - low)
        above.append(high - rate)
    return [below, above]


def _systems(store: Store, evaluation_ids: Sequence[int], models: Sequence[str]) -> list[str]:
    from ..baseline import in_order

    return list(models) + in_order(r["baseline"] for r in store.query(f"SELECT DISTINCT baseline FROM baseline_predictions WHERE evaluation_id IN "
            f"({','.join(str(int(e)) for e in evaluation_ids) or 'NULL'})"))


def _grouped_bars(ax, groups: list[str], systems: list[str], models: Sequence[str], counts: dict) -> None:
    """Bars of gold-type accuracy per group and system with 95% Wilson error bars; baselines hatched."""
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(systems))
    for i, m in enumerate(systems):
        kn = [counts.get((g, m), (0, 0)) for g in groups]
        ax.bar(x + i * width - 0.4 + width / 2, [k / n if n else 0 for k, n in kn], width,
               yerr=_error_bars(kn), capsize=2, label=m if m in models else f"{m} (baseline)",
               hatch=None if m in models else "//", alpha=1 if m in models else 0.55, edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="gold-type accuracy")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def label_accuracy(store: Store, sel: Selected, out: Path) -> Path:
    plt = _plt()
    rows = store.query("SELECT COALESCE(x.gold_type, '(none)') AS g, p.model AS m, "
                     "SUM(CASE WHEN p.matches_gold THEN 1 ELSE 0 END) AS k, COUNT(*) AS n "
                     "FROM predictions p JOIN examples x ON x.id = p.example_id WHERE p.evaluation_id = :e "
                     "GROUP BY 1, 2 UNION ALL "
                     "SELECT COALESCE(x.gold_type, '(none)'), b.baseline, "
                     "SUM(CASE WHEN b.matches_gold THEN 1 ELSE 0 END), COUNT(*) "
                     "FROM baseline_predictions b JOIN examples x ON x.id = b.example_id WHERE b.evaluation_id = :e "
                     "GROUP BY 1, 2", e=sel.evaluation_id)
    short = lambda label: label.replace(" gadget", "").replace("/", "/\n")  # noqa: E731
    labels = sorted({r["g"] for r in rows})
    counts = {(short(r["g"]), r["m"]): (r["k"], r["n"]) for r in rows}
    systems = _systems(store, [sel.evaluation_id], sel.models)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(labels)), 4.5))
    _grouped_bars(ax, [short(l) for l in labels], systems, sel.models, counts)
    ax.set_title(f"Run {sel.run_id}, evaluation {sel.evaluation_id}: accuracy per gold label (95% Wilson intervals)",
                 fontsize=10)
    path = out / f"run{sel.run_id}_eval{sel.evaluation_id}_label_accuracy.png"
    return _save(fig, path)


def form_accuracy(store: Store, selected: Sequence[Selected], out: Path, name: str, title: str) -> Path | None:
    """Accuracy overall and per instruction form, models beside the baselines, pooled over the
    selected evaluations (one evaluation, or every fold of a study), with 95% Wilson intervals."""
    plt = _plt()
    ids = ",".join(str(int(s.evaluation_id)) for s in selected)
    rows = store.query(f"SELECT system, instruction_form, SUM(correct) AS k, SUM(examples) AS n FROM system_accuracy "
                     f"WHERE evaluation_id IN ({ids}) GROUP BY system, instruction_form")
    if not rows:
        return None
    counts = {(r["instruction_form"], r["system"]): (r["k"], r["n"]) for r in rows}
    order = ["all", "category", "open", "paraphrase"]
    groups = [f for f in order if any(k[0] == f for k in counts)]
    models = list(dict.fromkeys(m for s in selected for m in s.models))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = {g: f"{g}\n({max(counts.get((g, m), (0, 0))[1] for m in models)} ex)" for g in groups}
    _grouped_bars(ax, [labels[g] for g in groups], _systems(store, [s.evaluation_id for s in selected], models),
                  models, {(labels[g], m): v for (g, m), v in counts.items() if g in labels})
    ax.set_title(title + "\n95% Wilson intervals; open: the instruction names no category", fontsize=9)
    path = out / name
    return _save(fig, path)


def confusion(store: Store, sel: Selected | Sequence[Selected], out: Path, stem: str | None = None,
              what: str | None = None) -> list[Path]:
    """One confusion matrix per model; several selected evaluations (a study's folds) are pooled."""
    import numpy as np

    plt = _plt()
    from ..parse import CANONICAL_LABELS

    sels = [sel] if isinstance(sel, Selected) else list(sel)
    first = sels[0]
    stem = stem or f"run{first.run_id}_eval{first.evaluation_id}"
    what = what or f"run {first.run_id}, evaluation {first.evaluation_id}"
    conf = store.query("SELECT model, gold_label, predicted_label, SUM(n) AS n FROM confusion WHERE evaluation_id IN "
                       f"({','.join(str(int(s.evaluation_id)) for s in sels)}) "
                       "GROUP BY model, gold_label, predicted_label")
    gold = sorted({c["gold_label"] for c in conf})
    pred = [l for l in CANONICAL_LABELS] + ["(other)"]
    short = lambda l: l.replace(" gadget", "")
    paths = []
    for m in dict.fromkeys(m for s in sels for m in s.models):
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
        ax.set(xlabel="predicted canonical label", ylabel="gold label", title=f"{m}: confusion ({what})")
        paths.append(_save(fig, out / f"{stem}_confusion_{m}.png"))
    return paths


def risk_coverage(store: Store, sels: Sequence[Selected], out: Path, stem: str, what: str) -> Path | None:
    """Agreement as confidence: the majority vote's risk against coverage when only examples whose
    agreement level (models giving the majority type / models) reaches a threshold are answered,
    the selected evaluations pooled; the dashed line is the risk of answering everything."""
    plt = _plt()
    rows = store.query("SELECT CAST(majority_count AS FLOAT) / n_models AS level, "
                       "CASE WHEN majority_matches_gold THEN 1 ELSE 0 END AS right FROM agreements "
                       f"WHERE n_models >= 2 AND evaluation_id IN ({','.join(str(int(s.evaluation_id)) for s in sels)})")
    if not rows:
        return None
    levels = sorted({round(r["level"], 6) for r in rows}, reverse=True)
    cov, risk = [0.0], []
    for lv in levels:
        covered = [r["right"] for r in rows if round(r["level"], 6) >= lv]
        cov.append(len(covered) / len(rows))
        risk.append(1 - sum(covered) / len(covered))
    risk = [risk[0]] + risk
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.step(cov, risk, where="post", marker="o", label="majority vote, most agreed examples first")
    for x, y, lv in zip(cov[1:], risk[1:], levels):
        ax.annotate(f"agreement ≥ {lv:.2f}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(risk[-1], ls="--", color="grey", lw=1, label="risk when answering every example")
    ax.set(xlabel="coverage (share of examples answered)", ylabel="risk (error rate of the answers)",
           xlim=(0, 1.02), ylim=(0, max(risk) * 1.2 + 0.02), title=f"Risk-coverage ({what})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / f"{stem}_risk_coverage.png"
    return _save(fig, path)


def runs_trend(store: Store, out: Path) -> Path | None:
    plt = _plt()
    rows = store.query("SELECT run_id, model, agreement_rate, gold_accuracy, format_accuracy, examples, epochs "
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
    base = store.query("SELECT l.run_id, s.accuracy FROM system_accuracy s JOIN latest_evaluations l "
                     "ON l.id = s.evaluation_id WHERE s.system = 'tfidf-logreg' AND s.instruction_form = 'all' "
                     "ORDER BY l.run_id")
    if base:
        ax.plot([b["run_id"] for b in base], [b["accuracy"] for b in base], ":^", color="gray",
                label="tfidf-logreg baseline")
    ax.set_xticks(runs, [f"{r}\n{next(x['examples'] for x in rows if x['run_id'] == r)} ex" for r in runs],
                  fontsize=8)
    ax.set(ylim=(-0.02, 1.02), xlabel="run (examples)", ylabel="rate", title="Agreement and accuracy across runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "runs_trend.png"
    return _save(fig, path)


def plot_all(store: Store, sel: Sequence[Selected], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"cannot create output folder {out}: {exc.strerror}") from None
    paths: list[Path] = []
    for s in sel:
        p = loss_curves(store, s.run_id, out)
        if p:
            paths.append(p)
        paths.append(label_accuracy(store, s, out))
        p = form_accuracy(store, [s], out, f"run{s.run_id}_eval{s.evaluation_id}_form_accuracy.png",
                          f"Run {s.run_id}, evaluation {s.evaluation_id}")
        if p:
            paths.append(p)
        paths += confusion(store, s, out)
    studies: dict[int, list[Selected]] = {}
    for s in sel:
        if s.study_id is not None:
            studies.setdefault(s.study_id, []).append(s)
    for sid, ss in studies.items():
        p = form_accuracy(store, ss, out, f"study{sid}_form_accuracy.png",
                          f"Study {sid}: {len(ss)} runs pooled (every example once per seed)")
        if p:
            paths.append(p)
    p = runs_trend(store, out)
    if p:
        paths.append(p)
    return paths
