"""The scratch recipe: what a model trained from random weights on a few hundred lines needs
beyond the tutorial's fine-tuning loop (issue 13 measured each lever; README "Scratch recipe").

- `open_copies`: every training example whose instruction names its label is also shown with
  the open instruction, so the label has to be read from the excerpt for every line, not only
  for the open-form ones (otherwise a model learns to copy the label out of the instruction).
- `dev_slice`: an inner development slice of the training split, stratified like the folds, on
  which `dev_score` judges each epoch by generation (gold-type accuracy, then format) so the
  kept model is the best epoch's, not the last.
- `span_corrupt` / `tapt_examples`: task-adaptive pretraining on the training split's excerpts
  (Gururangan et al., 2020): T5's span corruption (Raffel et al., 2020: 15% of the tokens in
  spans of mean length 3, each span replaced by one sentinel in the input and spelled out after
  it in the target) for the encoder-decoder, causal language modelling for GPT-2.

Only the run's training split is ever used here: the evaluated examples are not passed in.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from .batching import Encoded, encode_causal, encode_seq2seq, fit
from .data import Example, fold_assignment
from .parse import canonical_label, matches_gold, named_labels, parse_output
from .prompts import causal_answer, seq2seq_prompt

OPEN_INSTRUCTION = "Identify any weird machine gadget in the excerpt. Report gadget_type, location and explanation."
SENTINELS = 100  # T5's <extra_id_0> ... <extra_id_99>


def sentinel_tokens(n: int = SENTINELS) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def names_its_label(example: Example) -> bool:
    gold = canonical_label(example.gold_type)
    return gold is not None and gold in named_labels(example.instruction)


def open_copies(examples: Sequence[Example]) -> list[Example]:
    """The examples, followed by an open-instruction copy of each one whose instruction names
    its gold label (the copies keep the original's index: they are the same line)."""
    return list(examples) + [replace(e, instruction=OPEN_INSTRUCTION) for e in examples if names_its_label(e)]


CUE_QUOTE = 'Quote the excerpt from "{start}" to "{end}" exactly. Report it as location.'


def cue_instruction(span: str) -> str:
    """The quoting instruction that asks for `span` by its first and last two words."""
    words = span.split()
    return CUE_QUOTE.format(start=" ".join(words[:2]), end=" ".join(words[-2:]))


def cue_quotes(examples: Sequence[Example], per_excerpt: int, seed: int, shuffle: bool = False) -> list[Example]:
    """Quoting examples mixed into fine-tuning: for each excerpt, `per_excerpt` runs of 3 to 10 of
    its words (none holding a `;`, which ends a field), each asked for by its first and last two
    words and answered `location: <the run>`. Unlike `tapt_examples`' quotes the answer is
    determined by the prompt, so the only way to lower the loss is to find the cue in the
    excerpt and copy from there: the skill a location needs and the trained models lack (given
    the first two words of the gold location, they wrote its next word in about 1 case of 10).

    `shuffle`: each quoting example's excerpt is its words in a new random order, so what follows
    the cue cannot be recalled from the training text, only copied (with the excerpts as they are,
    scratch T5 fitted the quotes, loss 0.08, yet copied nothing of held-out excerpts)."""
    rng = random.Random(seed + 13)
    out: list[Example] = []
    for e in examples:
        excerpt_words = e.input.split()
        for _ in range(per_excerpt):
            text = " ".join(rng.sample(excerpt_words, len(excerpt_words))) if shuffle else e.input
            for _try in range(20):
                span = quote_span(text, rng)
                if ";" not in span:
                    break
            else:
                continue
            out.append(Example(e.index, cue_instruction(span), text, f"location: {span}"))
    return out


def dev_slice(train: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(rest, dev): about `fraction` of the training split held out, stratified by label and
    instruction form (one fold of the same partition `wmg train --folds` uses); no slice for 0."""
    if not 0 <= fraction < 0.5:
        raise ValueError("dev_fraction must be between 0 and 0.5")
    if fraction == 0:
        return list(train), []
    k = max(2, round(1 / fraction))
    if len(train) < 2 * k:
        return list(train), []
    assignment = fold_assignment(list(train), k, seed + 7)
    rest = [e for e, f in zip(train, assignment) if f != 1]
    dev = [e for e, f in zip(train, assignment) if f == 1]
    return rest, dev


def dev_score(outputs: Sequence[str], dev: Sequence[Example]) -> tuple[float, float]:
    """(gold-type accuracy, format accuracy) of generated outputs on the dev slice; compared as a
    tuple, so format breaks ties in accuracy."""
    if not dev:
        return (0.0, 0.0)
    hits = fmt = 0
    for text, e in zip(outputs, dev):
        p = parse_output(text)
        fmt += p.format_ok
        hits += matches_gold(p.gadget_type, e.gold_type)
    return (hits / len(dev), fmt / len(dev))


def span_corrupt(ids: Sequence[int], sentinel_ids: Sequence[int], eos_id: int, rng: random.Random,
                 noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5's span corruption of one token sequence (without EOS): returns (input, target).

    round(len x density) tokens are masked in round(masked / mean_span) spans placed at random
    (T5's `random_spans_noise_mask`: the masked and the kept tokens are each cut into that many
    non-empty runs at random and interleaved, kept first). Each span becomes one sentinel in the
    input; the target lists each sentinel followed by the tokens it hides. Both end with EOS."""
    n = len(ids)
    if n < 2:
        return list(ids) + [eos_id], [eos_id]
    n_noise = min(max(1, round(n * noise_density)), n - 1)
    n_spans = min(max(1, round(n_noise / mean_span)), n_noise, n - n_noise, len(sentinel_ids))

    def cut(total: int) -> list[int]:  # `total` split into n_spans positive parts, at random
        points = sorted(rng.sample(range(1, total), n_spans - 1)) if n_spans > 1 else []
        bounds = [0] + points + [total]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    noise, keep = cut(n_noise), cut(n - n_noise)
    inp: list[int] = []
    tgt: list[int] = []
    pos = 0
    for i, (k, m) in enumerate(zip(keep, noise)):
        inp += ids[pos:pos + k]
        pos += k
        inp.append(sentinel_ids[i])
        tgt.append(sentinel_ids[i])
        tgt += ids[pos:pos + m]
        pos += m
    return inp + [eos_id], tgt + [eos_id]


def quote_span(text: str, rng: random.Random, shortest: int = 3, longest: int = 10) -> str:
    """A random run of `shortest` to `longest` whitespace-separated words of `text` (the gold
    locations of the bundled data are 2 to 10 words, 6 on average)."""
    words = text.split()
    n = rng.randint(min(shortest, len(words)), min(longest, len(words)))
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start:start + n])


def tapt_examples(tokenizer, texts: Sequence[str], model_type: str, epochs: int, seed: int, max_len: int,
                  denoise: bool = True, quotes: int = 0) -> list[Encoded]:
    """Encoded task-adaptive pretraining examples from the training excerpts, `epochs` passes' worth
    (to be trained as one pass), each drawn afresh.

    denoise: seq2seq: a span-corrupted copy of every excerpt, a new mask per pass, as T5 does;
    causal: the excerpt itself, language modelling of every token.
    quotes: that many quoting examples per excerpt and pass: the task's prompt around the
    excerpt, answered by `location: <a random run of its words>` (the loss on the answer). A
    location is always a verbatim span of the excerpt, and a model from random weights does not
    learn to copy from 400 examples; quoting random spans is a copying task (the skill of Olsson
    et al.'s 2022 induction heads) made of the training text alone, in the spirit of Krishna et
    al. (2021), who recovered much of pretraining's benefit for summarization with synthetic
    tasks such as copying."""
    rng = random.Random(seed)
    out: list[Encoded] = []
    sentinels = None
    if model_type == "seq2seq" and denoise:
        sentinels = tokenizer.convert_tokens_to_ids(sentinel_tokens())
        if any(s is None or s == tokenizer.unk_token_id for s in sentinels):
            raise ValueError("the tokenizer has no T5 sentinel tokens (<extra_id_0> ...)")
    bodies = [fit(tokenizer(t, add_special_tokens=False)["input_ids"], max_len - 1) for t in texts]
    for _ in range(epochs):
        for text, ids in zip(texts, bodies):
            if denoise and model_type == "seq2seq":
                inp, tgt = span_corrupt(ids, sentinels, tokenizer.eos_token_id, rng)
                out.append(Encoded(inp, tgt))
            elif denoise:
                full = ids + [tokenizer.eos_token_id]
                out.append(Encoded(full, list(full)))
            for _ in range(quotes):
                prompt = seq2seq_prompt(QUOTE_INSTRUCTION, text)
                answer = f"location: {quote_span(text, rng)}"
                out.append(encode_seq2seq(tokenizer, prompt, answer, max_len, 64) if model_type == "seq2seq" else
                           encode_causal(tokenizer, prompt, causal_answer(answer), max_len, 64, "answer"))
    return out


QUOTE_INSTRUCTION = "Quote a few words of the excerpt exactly."
