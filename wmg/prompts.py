"""Prompt templates (pure functions), as in the reference tutorial."""
from __future__ import annotations


def seq2seq_prompt(instruction: str, excerpt: str) -> str:
    return f"Task: {instruction}\n\nExcerpt:\n{excerpt}\n\nAnswer:"


def causal_answer(output: str) -> str:
    """The text that follows the prompt in a causal training sequence (EOS is appended as a token)."""
    return f" {output}"
