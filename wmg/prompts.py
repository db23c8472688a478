"""Prompt templates (pure functions), as in the reference tutorial."""
from __future__ import annotations

# The lines around the excerpt: GPT-2's copy head finds the excerpt between them (wmg.copyhead).
EXCERPT_OPENS = "Excerpt:\n"
EXCERPT_CLOSES = "\n\nAnswer:"


def seq2seq_prompt(instruction: str, excerpt: str) -> str:
    return f"Task: {instruction}\n\n{EXCERPT_OPENS}{excerpt}{EXCERPT_CLOSES}"


def causal_answer(output: str) -> str:
    """The text that follows the prompt in a causal training sequence (EOS is appended as a token)."""
    return f" {output}"
