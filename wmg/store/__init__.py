"""The results store: `Store(url)` and the typed records it reads and writes."""
from .records import (AgreementRow, AnnotationRecord, BaselineRow, Claim, EvaluationInfo, EvaluationItem,
                      JudgmentRow, JudgmentSetInfo, Lease, ModelInfo, NewEvaluation, NewRun, PredictionRow, RunInfo,
                      StepRecord, StoredExample, StudyInfo, is_compared, lease_held, now)
from .session import DEFAULT_DB, StoreError
from .store import Store

__all__ = ["Store", "StoreError", "DEFAULT_DB", "now", "is_compared", "lease_held", "AgreementRow", "AnnotationRecord", "BaselineRow", "Claim",
           "EvaluationInfo", "EvaluationItem", "JudgmentRow", "JudgmentSetInfo", "Lease", "ModelInfo", "NewEvaluation", "NewRun",
           "PredictionRow", "RunInfo", "StepRecord", "StoredExample", "StudyInfo"]
