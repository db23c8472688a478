"""ORM tables of the results store (SQLAlchemy 2.0 typed mappings).

The migrations in `migrations/versions` create exactly these tables; a test
checks with Alembic's `compare_metadata` that the two never drift apart.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
MODEL_STATUSES = ("pending",) + RUN_STATUSES
EVAL_STATUSES = ("running", "completed", "failed")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    """Runs tied together: K stratified folds (each example evaluated once) repeated with N seeds.
    Each (seed, fold) is an ordinary run carrying the study's id."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    data_path: Mapped[str] = mapped_column(Text, nullable=False)
    data_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    folds: Mapped[int] = mapped_column(Integer, nullable=False)
    seeds_json: Mapped[str] = mapped_column(Text, nullable=False)  # the seeds, in order
    config_json: Mapped[str] = mapped_column(Text, nullable=False)  # the training and comparison options
    __table_args__ = (CheckConstraint("folds >= 2", name="folds"),)


class Run(Base):
    """One `wmg train` invocation: the data, the split, the models and how it ended."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    data_path: Mapped[str] = mapped_column(Text, nullable=False)
    data_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    examples_requested: Mapped[int | None] = mapped_column(Integer)  # NULL means all
    n_train: Mapped[int] = mapped_column(Integer, nullable=False)
    n_validation: Mapped[int] = mapped_column(Integer, nullable=False)
    eval_split: Mapped[float] = mapped_column(Float, nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    models: Mapped[str] = mapped_column(Text, nullable=False)  # comma-separated, in run order
    init_requested: Mapped[str] = mapped_column(String(16), nullable=False)
    device: Mapped[str] = mapped_column(String(16), nullable=False)
    platform: Mapped[str] = mapped_column(String(16), nullable=False)
    config_json: Mapped[str] = mapped_column(Text, nullable=False)  # every option as given
    versions_json: Mapped[str] = mapped_column(Text, nullable=False)  # wmg, torch, transformers, python
    train_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # The process training the run while it is `running`: a run whose process is gone
    # (SIGKILL, power loss) is marked interrupted by the next `wmg runs`.
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_start: Mapped[int | None] = mapped_column(BigInteger)  # tells a reused pid apart (Linux)
    checkpoint_dir: Mapped[str | None] = mapped_column(Text)  # checkpoints/run-<id>[-n]
    resumes: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    fold: Mapped[int | None] = mapped_column(Integer)  # the study's fold (1 to K) this run holds out
    # `wmg work`: the worker holding this run of a study ("host:pid:start") and until when (UTC)
    # unless it renews; a lease that ran out is taken over by another worker
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    __table_args__ = (CheckConstraint(f"status IN {RUN_STATUSES}", name="status"),)


class RunModel(Base):
    """One model of a run: its spec, the init actually used, and how training went."""

    __tablename__ = "run_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # order in --models
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    hub_id: Mapped[str] = mapped_column(Text, nullable=False)
    model_type: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    init: Mapped[str | None] = mapped_column(String(16))  # pretrained | scratch, once built
    init_note: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    hyperparams_json: Mapped[str] = mapped_column(Text, nullable=False)
    steps: Mapped[int | None] = mapped_column(Integer)
    final_loss: Mapped[float | None] = mapped_column(Float)  # mean training loss of the last epoch
    mean_loss: Mapped[float | None] = mapped_column(Float)  # mean over all steps (the tutorial's train_loss)
    final_val_loss: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    tokens_seen: Mapped[int | None] = mapped_column(Integer)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    chosen_epoch: Mapped[int | None] = mapped_column(Integer)  # the best epoch on the development slice
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)  # the process's peak while training this model
    # Checkpoint averaging (hyperparams' average_epochs K; NULL without it): whether the saved weights
    # are the average of the last K epochs rather than chosen_epoch's, and the average's scores on the
    # development slice (NULL without one)
    kept_average: Mapped[bool | None] = mapped_column(Boolean)
    average_dev_accuracy: Mapped[float | None] = mapped_column(Float)
    average_dev_format: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("run_id", "name"),
        CheckConstraint(f"status IN {MODEL_STATUSES}", name="status"),
        CheckConstraint("init IS NULL OR init IN ('pretrained', 'scratch')", name="init"),
        CheckConstraint("model_type IN ('seq2seq', 'causal')", name="model_type"),
    )


class TrainStep(Base):
    """The loss and learning rate after each optimizer step."""

    __tablename__ = "train_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_model_id: Mapped[int] = mapped_column(ForeignKey("run_models.id", ondelete="CASCADE"), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    epoch: Mapped[float] = mapped_column(Float, nullable=False)
    loss: Mapped[float] = mapped_column(Float, nullable=False)
    lr: Mapped[float] = mapped_column(Float, nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    __table_args__ = (UniqueConstraint("run_model_id", "step"),)


class EpochLoss(Base):
    """Mean training loss and validation loss at the end of each epoch."""

    __tablename__ = "epoch_losses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_model_id: Mapped[int] = mapped_column(ForeignKey("run_models.id", ondelete="CASCADE"), nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    train_loss: Mapped[float] = mapped_column(Float, nullable=False)
    val_loss: Mapped[float | None] = mapped_column(Float)
    # Generation-scored development slice of the training split (scratch recipe; NULL without one)
    dev_accuracy: Mapped[float | None] = mapped_column(Float)
    dev_format: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("run_model_id", "epoch"),)


class Evaluation(Base):
    """One comparison: every model generating on one set of examples."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)  # "validation" or the path of another data file
    n_examples: Mapped[int] = mapped_column(Integer, nullable=False)
    config_json: Mapped[str] = mapped_column(Text, nullable=False)
    full_agreements: Mapped[int | None] = mapped_column(Integer)
    full_agreement_rate: Mapped[float | None] = mapped_column(Float)
    report_path: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)  # the process's peak while comparing
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (CheckConstraint(f"status IN {EVAL_STATUSES}", name="status"),)


class Example(Base):
    """An example a run trained or was evaluated on, with its gold answer.

    The run's own split has evaluation_id NULL; examples of another data file
    belong to the evaluation that read them.
    """

    __tablename__ = "examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(16), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # order within its split
    source_line: Mapped[int] = mapped_column(Integer, nullable=False)  # 0-based example index in the data file
    instruction: Mapped[str] = mapped_column(Text, nullable=False)
    input: Mapped[str] = mapped_column(Text, nullable=False)
    gold_output: Mapped[str] = mapped_column(Text, nullable=False)
    gold_type: Mapped[str | None] = mapped_column(Text)
    gold_normalized: Mapped[str] = mapped_column(Text, nullable=False)
    instruction_form: Mapped[str] = mapped_column(String(16), nullable=False)  # category | open | paraphrase
    excerpt_words: Mapped[int] = mapped_column(Integer, nullable=False)
    __table_args__ = (
        CheckConstraint("split IN ('train', 'validation', 'external')", name="split"),
        Index("ix_examples_run_split", "run_id", "split", "position"),
        Index("ix_examples_evaluation_id", "evaluation_id"),
    )


class Prediction(Base):
    """One model's output on one example of an evaluation, parsed and checked."""

    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), nullable=False)
    run_model_id: Mapped[int] = mapped_column(ForeignKey("run_models.id", ondelete="CASCADE"), nullable=False)
    model: Mapped[str] = mapped_column(String(64), nullable=False)
    raw_text: Mapped[str] = mapped_column(Text, nullable=False)
    gadget_type: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(Text)
    explanation: Mapped[str | None] = mapped_column(Text)
    normalized_type: Mapped[str] = mapped_column(Text, nullable=False)
    canonical_label: Mapped[str | None] = mapped_column(Text)  # one of the six labels when the type normalizes to one
    fmt_gadget_type: Mapped[bool] = mapped_column(Boolean, nullable=False)
    fmt_location: Mapped[bool] = mapped_column(Boolean, nullable=False)
    fmt_explanation: Mapped[bool] = mapped_column(Boolean, nullable=False)
    format_ok: Mapped[bool] = mapped_column(Boolean, nullable=False)
    matches_gold: Mapped[bool] = mapped_column(Boolean, nullable=False)  # normalized type equals the gold's
    new_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    generation_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    rouge1_f1: Mapped[float | None] = mapped_column(Float)  # against the gold output (rouge-score, stemmed)
    rouge_l_f1: Mapped[float | None] = mapped_column(Float)
    # the location is an exact span of the excerpt (whitespace runs as one space); NULL: no location
    location_in_excerpt: Mapped[bool | None] = mapped_column(Boolean)
    __table_args__ = (
        UniqueConstraint("evaluation_id", "example_id", "run_model_id"),
        Index("ix_predictions_example_id", "example_id"),
    )


class Agreement(Base):
    """The models' agreement on one example of an evaluation."""

    __tablename__ = "agreements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), nullable=False)
    n_models: Mapped[int] = mapped_column(Integer, nullable=False)
    full_agreement: Mapped[bool] = mapped_column(Boolean, nullable=False)
    unique_types_json: Mapped[str] = mapped_column(Text, nullable=False)
    unique_normalized_json: Mapped[str] = mapped_column(Text, nullable=False)
    n_unique_normalized: Mapped[int] = mapped_column(Integer, nullable=False)
    majority_type: Mapped[str | None] = mapped_column(Text)
    majority_normalized: Mapped[str | None] = mapped_column(Text)
    majority_count: Mapped[int] = mapped_column(Integer, nullable=False)
    majority_matches_gold: Mapped[bool] = mapped_column(Boolean, nullable=False)
    __table_args__ = (
        UniqueConstraint("evaluation_id", "example_id"),
        Index("ix_agreements_example_id", "example_id"),
    )


class BaselinePrediction(Base):
    """A reference baseline's predicted gadget type for one example of an evaluation (never a model's
    prediction: no agreement view reads this table)."""

    __tablename__ = "baseline_predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), nullable=False)
    baseline: Mapped[str] = mapped_column(String(64), nullable=False)  # tfidf-logreg, majority-class
    predicted_type: Mapped[str | None] = mapped_column(Text)
    matches_gold: Mapped[bool] = mapped_column(Boolean, nullable=False)
    __table_args__ = (
        UniqueConstraint("evaluation_id", "example_id", "baseline"),
        Index("ix_baseline_predictions_example_id", "example_id"),
    )


JUDGE_OUTCOMES = ("full", "partial", "disagreement", "invalid", "error")


class JudgmentSet(Base):
    """One run of one judge over one evaluation. Judging again makes a new set (or,
    with --replace, deletes the judge's earlier sets first)."""

    __tablename__ = "judgment_sets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False,
                                               index=True)
    judge: Mapped[str] = mapped_column(String(32), nullable=False)
    judge_version: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str | None] = mapped_column(Text)  # the judge's own model, where it has one
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    config_json: Mapped[str] = mapped_column(Text, nullable=False)  # thresholds, API kind, base URL; never a key
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    seconds: Mapped[float | None] = mapped_column(Float)
    __table_args__ = {"sqlite_autoincrement": True}  # a replaced set's id is never reused


class Judgment(Base):
    """A verdict: on a pair of models (`pair`), on all models of an example (`overall`),
    or on one model against the gold output (`gold`, model in model_a)."""

    __tablename__ = "judgments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("judgment_sets.id", ondelete="CASCADE"), nullable=False)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    model_a: Mapped[str | None] = mapped_column(String(64))
    model_b: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    explanation: Mapped[str] = mapped_column(Text, nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    __table_args__ = (
        CheckConstraint(f"verdict IN {JUDGE_OUTCOMES}", name="verdict"),
        CheckConstraint("kind IN ('pair', 'overall', 'gold')", name="kind"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
        Index("ix_judgments_set_kind", "set_id", "kind"),
        Index("ix_judgments_example_id", "example_id"),
    )


class Annotation(Base):
    """A person's label for the models' outputs on one example."""

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), nullable=False)
    annotator: Mapped[str] = mapped_column(String(64), nullable=False)
    label: Mapped[str] = mapped_column(String(16), nullable=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    __table_args__ = (
        UniqueConstraint("evaluation_id", "example_id", "annotator"),
        CheckConstraint("label IN ('full', 'partial', 'disagreement', 'invalid')", name="label"),
    )
