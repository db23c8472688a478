"""Batched greedy generation with the KV cache; only the new tokens are decoded.

Prompts are sorted by length so a batch carries little padding; causal prompts
are padded on the left so every sequence continues right after its own
"Answer:". Each sequence stops at its EOS.

`no_repeat_ngram_size=n` forbids generating any n-gram twice, counting only the
generated tokens: transformers' own option also counts a causal model's prompt,
which would forbid quoting the excerpt (the location field is a verbatim span).

`location_span=True` constrains the location field to a span of the excerpt: once a
sequence has written `location:`, each next token must continue a run of the excerpt's own
tokens (the first one starting a word), or begin with `;`, which ends the field as the
parser reads it; the rest of the output is free. Extractive span decoding, as constrained
decoding does it (De Cao et al., 2021, "Autoregressive Entity Retrieval"): the stored
`location_in_excerpt` check measures what the model writes, and the evaluation records
whether the constraint was on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .batching import prompt_ids
from .config import GenerateConfig, has_copy_head
from .device import autocast


class GenerationStopped(Exception):
    """`generate` was asked to stop (its `should_stop` turned true) before its next batch."""


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


def _marked(tokenizer) -> tuple[set[int], set[int]]:
    """(word-initial token ids, ids whose text begins with `;`) of a tokenizer's vocabulary."""
    starts, closers = set(), set()
    for piece, i in tokenizer.get_vocab().items():
        if piece[:1] in ("\u2581", "\u0120"):  # SentencePiece's ▁ and byte-level BPE's Ġ: a space before
            starts.add(i)
            piece = piece[1:]
        if piece.startswith(";"):
            closers.add(i)
    return starts, closers


class LocationSpan:
    """A logits processor: inside the location field, only tokens that continue a span of the
    row's excerpt tokens, or a token beginning with `;` (which closes the field), or EOS.

    Per row it keeps where the field began and the excerpt positions the span written so far
    could end at, advanced by one token per step."""

    def __init__(self, tokenizer, excerpts: Sequence[list[int]], start: int,
                 marked: tuple[set[int], set[int]] | None = None):
        self.tok, self.excerpts, self.start = tokenizer, [list(e) for e in excerpts], start
        # `marked`: _marked(tokenizer), computed once per generate() call rather than per batch
        self.word_starts, self.closers = marked or _marked(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.state: list[str] = ["before"] * len(excerpts)  # before -> inside -> after
        self.ends: list[list[int]] = [[] for _ in excerpts]  # excerpt positions after the span so far

    def _enter(self, r: int) -> None:
        e = self.excerpts[r]
        ends = [p for p, t in enumerate(e) if t in self.word_starts] or list(range(len(e)))
        self.state[r], self.ends[r] = "inside", ends

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids[:, self.start:].tolist()
        for r, toks in enumerate(rows):
            if self.state[r] == "before":
                if toks and self.tok.decode(toks[-4:], skip_special_tokens=True).rstrip().endswith("location:"):
                    self._enter(r)
                else:
                    continue
            elif self.state[r] == "inside":
                t, e = toks[-1], self.excerpts[r]
                if t in self.closers or t == self.eos:
                    self.state[r] = "after"
                    continue
                self.ends[r] = [p + 1 for p in self.ends[r] if p < len(e) and e[p] == t]
                if not self.ends[r]:  # cannot happen under the mask; release rather than trap the row
                    self.state[r] = "after"
                    continue
            else:
                continue
            e = self.excerpts[r]
            allowed = {e[p] for p in self.ends[r] if p < len(e)} | self.closers | {self.eos}
            keep = torch.full_like(scores[r], -float("inf"))
            idx = torch.tensor(sorted(allowed), device=scores.device)
            keep[idx] = scores[r, idx]
            scores[r] = keep
        return scores


def excerpt_ids(tokenizer, excerpt: str, model_type: str) -> list[int]:
    """The excerpt's tokens as they read inside an answer (after `location: `): byte-level BPE
    marks a word's leading space in the token itself, so the causal models' excerpt gets one."""
    text = excerpt if model_type == "seq2seq" else " " + excerpt
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], model_type: str, cfg: GenerateConfig,
             max_input_length: int, device: str = "cpu", progress: bool = False, desc: str = "generate",
             excerpts: Sequence[str] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[Generation]:
    """Greedy outputs for `prompts`, in batches of similar length. `should_stop` is asked before
    each batch: when it is true, GenerationStopped is raised (a training's development-slice pass
    gives way to a stop request within one batch, not after the whole slice)."""
    from .progress import bar as progress_bar

    model.eval()
    model.to(device)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    encoded = [prompt_ids(tokenizer, p, max_input_length, model_type) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    bar = progress_bar(len(encoded), desc, enabled=progress, unit="examples")
    marked = None  # the vocabulary's word starts and `;` tokens, for LocationSpan (found on first use)
    for start in range(0, len(order), cfg.batch_size):
        if should_stop is not None and should_stop():
            bar.close()
            raise GenerationStopped()
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
        if model_type == "seq2seq" and has_copy_head(model.config):
            extra["copy_ids"] = input_ids  # T5's copy head: the source tokens, at every decoding step
        processors = []
        answer_at = input_ids.size(1) if model_type == "causal" else 1  # after the prompt / the start token
        if cfg.no_repeat_ngram_size:
            processors.append(NoRepeatNGram(cfg.no_repeat_ngram_size, answer_at))
        if cfg.location_span:
            if excerpts is None:
                raise ValueError("location_span needs the excerpts")
            marked = marked or _marked(tokenizer)
            processors.append(LocationSpan(tokenizer, [excerpt_ids(tokenizer, excerpts[i], model_type) for i in idx],
                                           answer_at, marked))
        if processors:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList(processors)
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
