"""Batched greedy generation with the KV cache; only the new tokens are decoded.

Prompts are sorted by length so a batch carries little padding; causal prompts
are padded on the left so every sequence continues right after its own
"Answer:". Each sequence stops at its EOS.

`no_repeat_ngram_size=n` forbids generating any n-gram twice, counting only the
generated tokens: transformers' own option also counts a causal model's prompt,
which would forbid quoting the excerpt (the location field is a verbatim span).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .batching import prompt_ids
from .config import GenerateConfig
from .train import autocast


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # this example's share of its batch's wall time
    ids: tuple[int, ...] = ()  # the generated token ids, up to and including EOS


def _new_token_count(ids: list[int], eos_id: int) -> int:
    """Tokens generated up to and including the first EOS (what follows is batch padding)."""
    return ids.index(eos_id) + 1 if eos_id in ids else len(ids)


class NoRepeatNGram:
    """A logits processor: no n-gram among the tokens generated after position `start` twice.

    Keeps, per row, the tokens that followed each (n-1)-gram so far, updated with one new
    n-gram per step (transformers' version rescans the whole sequence every step)."""

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start
        self.seen: list[dict[tuple[int, ...], set[int]]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.n
        rows = input_ids[:, self.start:].tolist()
        if not self.seen:
            self.seen = [{} for _ in rows]
        for r, toks in enumerate(rows):
            if len(toks) >= n:
                self.seen[r].setdefault(tuple(toks[-n:-1]), set()).add(toks[-1])
            if len(toks) >= n - 1:
                banned = self.seen[r].get(tuple(toks[len(toks) - n + 1:]) if n > 1 else ())
                if banned:
                    scores[r, list(banned)] = -float("inf")
        return scores


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], model_type: str, cfg: GenerateConfig,
             max_input_length: int, device: str = "cpu", progress: bool = False, desc: str = "generate") -> list[Generation]:
    from .progress import bar as progress_bar

    model.eval()
    model.to(device)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    encoded = [prompt_ids(tokenizer, p, max_input_length, model_type) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    bar = progress_bar(len(encoded), desc, enabled=progress, unit="examples")
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        rows = [encoded[i] for i in idx]
        width = max(len(r) for r in rows)
        if model_type == "causal":  # left padding
            ids = [[pad_id] * (width - len(r)) + r for r in rows]
            mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        else:
            ids = [r + [pad_id] * (width - len(r)) for r in rows]
            mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        input_ids = torch.tensor(ids, device=device)
        attention_mask = torch.tensor(mask, device=device)
        t0 = time.perf_counter()
        extra = {}
        if model_type == "causal":
            # A preallocated KV cache: the dynamic one copies the whole cache (prompt included) at
            # every step. Same outputs; measured 22% faster for distilgpt2 at 256 new tokens, 6% on
            # the trained model's short answers; T5's decoder cache is short and gains nothing.
            extra["cache_implementation"] = "static"
        if cfg.no_repeat_ngram_size:
            from transformers import LogitsProcessorList

            start = input_ids.size(1) if model_type == "causal" else 1  # after the prompt / the start token
            extra["logits_processor"] = LogitsProcessorList([NoRepeatNGram(cfg.no_repeat_ngram_size, start)])
        with autocast(cfg.precision, device):
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=cfg.max_new_tokens,
                do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True, **extra,
            )
        dt = (time.perf_counter() - t0) / len(idx)
        if model_type == "causal":
            out = out[:, input_ids.size(1):]
        else:
            out = out[:, 1:]  # drop the decoder start token
        for row, i in zip(out.tolist(), idx):
            n = _new_token_count(row, eos_id)
            text = tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            results[i] = Generation(text, n, dt, tuple(row[:n]))
        bar.update(len(idx))
    bar.close()
    return [r for r in results if r is not None]
