"""The typed records the results store hands back and takes: frozen dataclasses, never live
ORM rows, bare tuples or dicts. `Store` (wmg.store) reads and writes them."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple


def is_compared(run_status: str, evaluation_status: str | None) -> bool:
    """Trained, and its comparison on its own held-out split completed (`evaluation_status`, None:
    none yet): nothing of the run is left to make. The one rule for `RunInfo.compared` and the
    store's claims, which read ORM rows."""
    return run_status == "completed" and evaluation_status == "completed"


def lease_held(until: datetime | None, at: datetime) -> bool:
    """Whether a `wmg work` lease running until `until` (None: released or never taken) holds at `at`."""
    return until is not None and until > at


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    hub_id: str
    model_type: str
    position: int
    status: str
    init: str | None
    init_note: str | None
    parameters: int | None
    vocab_size: int | None
    hyperparams: dict
    steps: int | None
    final_loss: float | None
    mean_loss: float | None
    final_val_loss: float | None
    train_seconds: float | None
    checkpoint_path: str | None
    chosen_epoch: int | None = None  # the best epoch on the dev slice (None: the last, before 0009)
    peak_rss_mb: float | None = None  # peak resident memory while training it (None: not measured)
    kept_average: bool | None = None  # the saved weights are the last epochs' average (None: not averaged)
    average_dev_accuracy: float | None = None  # the average's score on the development slice
    average_dev_format: float | None = None


@dataclass(frozen=True)
class RunInfo:
    id: int
    created_at: datetime
    finished_at: datetime | None
    status: str
    data_path: str
    data_sha256: str
    examples_requested: int | None
    n_train: int
    n_validation: int
    eval_split: float
    seed: int
    init_requested: str
    device: str
    platform: str
    config: dict
    versions: dict
    train_seconds: float | None
    error: str | None
    models: list[ModelInfo] = field(default_factory=list)
    latest_evaluation: "EvaluationInfo | None" = None
    checkpoint_dir: str | None = None
    resumes: int = 0
    host: str | None = None
    pid: int | None = None
    study_id: int | None = None
    fold: int | None = None  # the study's fold (1 to K) this run holds out
    lease_owner: str | None = None  # `wmg work`: the worker holding the run, and until when (UTC)
    lease_until: datetime | None = None
    # its comparisons on its held-out split (not on other files): "completed" if one completed, else
    # the latest one's status; None: none yet
    heldout_status: str | None = None

    @property
    def compared(self) -> bool:
        """Trained, and compared on its held-out split: nothing of this run is left to make. A
        comparison on another file (`wmg compare --data`), finished or not, changes nothing here."""
        return is_compared(self.status, self.heldout_status)


@dataclass(frozen=True)
class StudyInfo:
    id: int
    created_at: datetime
    data_path: str
    data_sha256: str
    folds: int
    seeds: list[int]
    config: dict
    runs: list[RunInfo] = field(default_factory=list)  # in (seed, fold) order


@dataclass(frozen=True)
class EvaluationInfo:
    id: int
    run_id: int
    created_at: datetime
    status: str
    source: str
    n_examples: int
    full_agreements: int | None
    full_agreement_rate: float | None
    report_path: str | None
    seconds: float | None
    error: str | None
    format_accuracy: dict[str, float] = field(default_factory=dict)
    gold_accuracy: dict[str, float] = field(default_factory=dict)
    baseline_accuracy: dict[str, float] = field(default_factory=dict)  # reference baselines' gold-type accuracy
    n_open: int = 0  # examples whose instruction is in the open form (names no category)
    gold_accuracy_open: dict[str, float] = field(default_factory=dict)  # models and baselines, open form only
    config: dict = field(default_factory=dict)  # the comparison's options (max_new_tokens, no_repeat_ngram_size, ...)
    peak_rss_mb: float | None = None  # peak resident memory while comparing (None: not measured)


@dataclass(frozen=True)
class StoredExample:
    id: int
    split: str
    position: int
    source_line: int
    instruction: str
    input: str
    gold_output: str
    gold_type: str | None


@dataclass(frozen=True)
class PredictionRow:
    """What the comparison writes for one model on one example."""

    example_id: int
    model: str
    raw_text: str
    gadget_type: str | None
    location: str | None
    explanation: str | None
    normalized_type: str
    canonical_label: str | None
    format_checks: dict[str, bool]
    matches_gold: bool
    new_tokens: int
    generation_seconds: float
    rouge1_f1: float | None = None
    rouge_l_f1: float | None = None
    location_in_excerpt: bool | None = None  # the location is an exact span of the excerpt (None: no location)


@dataclass(frozen=True)
class AgreementRow:
    example_id: int
    n_models: int
    full_agreement: bool
    unique_types: list[str]
    unique_normalized: list[str]
    majority_type: str | None
    majority_normalized: str | None
    majority_count: int
    majority_matches_gold: bool


@dataclass(frozen=True)
class BaselineRow:
    example_id: int
    baseline: str
    predicted_type: str | None
    matches_gold: bool


@dataclass(frozen=True)
class Lease:
    """A worker's hold on the runs it makes or takes: `owner` is "host:pid:start", renewed every
    third of `seconds`. Times are UTC from each worker's own clock (keep the machines' clocks in
    step, as NTP does; a skew eats into the lease)."""
    owner: str
    seconds: float

    def until(self) -> datetime:
        return now() + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Claim:
    """What `claim_study_run` found: a (seed, fold) to make (`run_id` None: no run yet; else the
    run to resume or compare), or nothing claimable now: `waiting` runs are held by live leases
    or by processes outside `wmg work`, `done` when every run is trained and compared."""
    seed: int | None = None
    fold: int | None = None
    run_id: int | None = None
    taken_from: str | None = None  # the worker whose lease ran out
    waiting: int = 0
    done: bool = False


@dataclass(frozen=True)
class JudgmentRow:
    example_id: int
    kind: str  # pair | overall | gold
    model_a: str | None
    model_b: str | None
    verdict: str
    explanation: str
    confidence: float


@dataclass(frozen=True)
class EvaluationItem:
    """One example of an evaluation with every model's raw output, for judging and annotation."""

    example_id: int
    position: int
    instruction: str
    input: str
    gold_output: str
    full_agreement: bool
    outputs: dict[str, str]


class NewRun(NamedTuple):
    """What `Store.create_run` made: the run's id and each model's `run_models` id by name
    (a named tuple, so `run_id, model_ids = store.create_run(...)` reads as before)."""
    id: int
    model_ids: dict[str, int]


class NewEvaluation(NamedTuple):
    """What `Store.create_evaluation` made: its id and the examples it will predict on."""
    id: int
    examples: list[StoredExample]


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step of a model's training as stored."""
    step: int
    epoch: float
    loss: float
    lr: float


@dataclass(frozen=True)
class JudgmentSetInfo:
    """One judge's run over an evaluation (its verdicts: `Store.set_judgments`)."""
    id: int
    judge: str
    version: str
    model: str | None
    created_at: datetime


@dataclass(frozen=True)
class AnnotationRecord:
    """One person's label for one example of an evaluation."""
    evaluation_id: int
    example_id: int
    position: int  # the example's position in the evaluation
    annotator: str
    label: str
    note: str  # "" when none
