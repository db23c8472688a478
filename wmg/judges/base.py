"""What every judge is: a name and version, and two questions it answers.

A verdict is one of `full`, `partial`, `disagreement`, `invalid` (or `error` when
a judge could not reach one, e.g. an LLM reply that cannot be parsed), with a
one-sentence explanation and a confidence in 0..1.
"""
from __future__ import annotations

from dataclasses import dataclass

VERDICTS = ("full", "partial", "disagreement", "invalid")
OUTCOMES = VERDICTS + ("error",)


class JudgeError(RuntimeError):
    """A judge cannot work at all (server unreachable, model missing): one line, nothing stored."""


@dataclass(frozen=True)
class Verdict:
    verdict: str  # one of OUTCOMES
    explanation: str
    confidence: float  # 0..1

    def __post_init__(self):
        if self.verdict not in OUTCOMES:
            raise ValueError(f"unknown verdict {self.verdict!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} outside 0..1")


class Judge:
    """Base class. `compare` judges two models' outputs on one example (raw output
    texts); `against_gold` judges one output against the gold output."""

    name: str = "judge"
    version: str = "1"
    model: str | None = None  # the model behind the judge, where it has one
    prompt_hash: str | None = None  # sha256 of the prompt template, where it has one

    def compare(self, a: str, b: str, gold: str) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def against_gold(self, prediction: str, gold: str) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What is stored with a judgment set (never a secret)."""
        return {"name": self.name, "version": self.version, "model": self.model, "prompt_hash": self.prompt_hash}
