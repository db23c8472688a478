"""Tokenize examples, collate micro-batches with dynamic padding, group by length.

Seq2seq labels are the target ids with padding set to -100. Causal labels are
the input ids with padding (and, for answer-only loss, the prompt) set to -100;
the pad token is EOS, so the attention mask is what tells padding apart.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

IGNORE = -100


def fit(ids: list[int], budget: int) -> list[int]:
    """Truncate to `budget` tokens keeping the head and the tail.

    A prompt ends with "Answer:", which the model needs to see, and starts with
    the task; an over-long excerpt loses its middle instead.
    """
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # seq2seq: target ids; causal: full sequence with IGNORE on unscored positions
    # Loss weight of each label position (None: every scored token weighs 1). The scratch
    # recipe weighs the tokens of the gadget_type value more (see `type_weights`).
    weights: tuple[float, ...] | None = None

    @property
    def size(self) -> int:
        """Tokens this example costs in a batch (used to group similar lengths)."""
        return len(self.input_ids) + len(self.labels)


_TYPE_VALUE = re.compile(r"(?i)gadget[ _]?type\s*:\s*([^;\n]*)")
_LOCATION_VALUE = re.compile(r"(?i)\blocation\s*:\s*([^;\n]*)")


def type_weights(tokenizer, text: str, n_tokens: int, weight: float, add_special_tokens: bool,
                 location_weight: float = 1.0) -> tuple[float, ...] | None:
    """Per-token loss weights for `text` tokenized as given: `weight` on the tokens that overlap
    the gadget_type field's value (the label the model must decide), `location_weight` on those
    of the location's value, 1 elsewhere.

    The label is 3 to 6 of an answer's 60-odd tokens, so under a plain mean the location and
    explanation dominate what a small-data model learns; weighting the label tokens is the
    classification signal a pretrained model would not need. None when both weights are 1."""
    if weight == 1.0 and location_weight == 1.0:
        return None
    offsets = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
    out = [1.0] * n_tokens
    for pattern, w in ((_TYPE_VALUE, weight), (_LOCATION_VALUE, location_weight)):
        m = pattern.search(text)
        if m and w != 1.0:
            a, b = m.span(1)
            for i, (s, e) in enumerate(offsets[:n_tokens]):
                if e > a and s < b and e > s:
                    out[i] = w
    return tuple(out)


def encode_seq2seq(tokenizer, prompt: str, target: str, max_input: int, max_target: int,
                   type_weight: float = 1.0, location_weight: float = 1.0) -> Encoded:
    src = fit(tokenizer(prompt, add_special_tokens=True)["input_ids"], max_input)
    tgt = tokenizer(target, add_special_tokens=True)["input_ids"][:max_target]
    return Encoded(src, tgt, type_weights(tokenizer, target, len(tgt), type_weight, True, location_weight))


def prompt_ids(tokenizer, prompt: str, max_len: int, model_type: str) -> list[int]:
    """Token ids of a prompt as fed to generation (no EOS appended for causal models)."""
    if model_type == "seq2seq":
        return fit(tokenizer(prompt, add_special_tokens=True)["input_ids"], max_len)
    return fit(tokenizer(prompt, add_special_tokens=False)["input_ids"], max_len)


def encode_causal(tokenizer, prompt: str, answer: str, max_len: int, max_answer: int, loss: str,
                  type_weight: float = 1.0, location_weight: float = 1.0, prompt_weight: float = 1.0) -> Encoded:
    """prompt + answer + EOS; the prompt is shortened (middle first) so the answer fits. With
    `loss="full"` the prompt's tokens are scored too, each weighing `prompt_weight`."""
    ans = tokenizer(answer, add_special_tokens=False)["input_ids"][: max_answer] + [tokenizer.eos_token_id]
    p = fit(tokenizer(prompt, add_special_tokens=False)["input_ids"], max_len - len(ans))
    ids = p + ans
    labels = ([IGNORE] * len(p) + ans) if loss == "answer" else list(ids)
    w = type_weights(tokenizer, answer, len(ans) - 1, type_weight, False, location_weight)
    if loss == "full" and prompt_weight != 1.0:
        w = w or (1.0,) * (len(ans) - 1)
    else:
        prompt_weight = 1.0
    return Encoded(ids, labels, None if w is None else (prompt_weight,) * len(p) + w + (1.0,))


PAD_MULTIPLE = int(__import__("os").environ.get("WMG_PAD_MULTIPLE", "32"))


class Collator:
    """Pads a list of `Encoded` to the longest in the batch (dynamic padding), rounded up
    to a multiple of `multiple` tokens.

    Rounding keeps the number of distinct tensor shapes small: every new shape costs
    oneDNN kernels and allocator blocks that stay resident, and with exact lengths the
    resident set of a training run grew by gigabytes (measured: 2.0 -> 4.4 GB over one
    epoch of T5-small); a few padded tokens per row are cheap by comparison.
    """

    def __init__(self, model_type: str, pad_id: int, multiple: int = PAD_MULTIPLE):
        self.model_type = model_type
        self.pad_id = pad_id
        self.multiple = max(1, multiple)

    def _pad(self, rows: Sequence[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        width = -(-width // self.multiple) * self.multiple
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def __call__(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        ids = [e.input_ids for e in items]
        batch = {
            "input_ids": self._pad(ids, self.pad_id),
            "attention_mask": self._pad([[1] * len(r) for r in ids], 0),
            "labels": self._pad([e.labels for e in items], IGNORE),
        }
        if any(e.weights is not None for e in items):
            rows = [list(e.weights) if e.weights is not None else [1.0] * len(e.labels) for e in items]
            width = batch["labels"].size(1)
            batch["weights"] = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float32)
        return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Shuffled micro-batches of similar length, reproducible from (seed, epoch).

    Indices are shuffled, cut into chunks of `chunk` micro-batches, sorted by length
    inside a chunk and cut into micro-batches; the micro-batches are shuffled again.
    Similar lengths mean little padding; the shuffles keep the order random. `set_epoch(epoch,
    skip)` picks the epoch and how many of its first micro-batches an iteration leaves out (a
    resumed epoch's, already trained); the length stays the whole epoch's.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: bool = True, chunk: int = 16):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.chunk = chunk
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        return self.batches_for(self.epoch)

    def batches_for(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1000 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if not self.group:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        span = self.batch_size * self.chunk
        out: list[list[int]] = []
        for start in range(0, len(order), span):
            part = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            out += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip:])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)
