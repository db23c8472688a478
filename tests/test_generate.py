"""Batched greedy generation and its no-repeat rule."""
import torch

from wmg.config import GenerateConfig, resolve_models
from wmg.generate import NoRepeatNGram, generate
from wmg.models import build_scratch
from wmg.pipeline import TINY


def test_no_repeat_bans_the_token_that_would_repeat_an_ngram():
    ids = torch.tensor([[7, 7, 7, 1, 2, 3, 1, 2],   # prompt 7 7 7, then 1 2 3 1 2: "1 2 3" must not recur
                        [1, 2, 3, 9, 9, 9, 9, 9]])  # the prompt holds 1 2 3; generated 9 9 9 9 9
    proc = NoRepeatNGram(3, start=3)
    for width in range(4, ids.size(1) + 1):  # called once per generated token, as generate() does
        scores = proc(ids[:, :width], torch.zeros(2, 10))
    assert scores[0, 3] == -float("inf") and torch.isfinite(scores[0, [0, 1, 2, 4, 5]]).all()
    assert scores[1, 9] == -float("inf")  # "9 9 9" was generated already
    # the prompt is not counted: after "1 2" in the prompt, 3 stays allowed in the generated part
    proc = NoRepeatNGram(3, start=3)
    scores = proc(torch.tensor([[1, 2, 3, 1, 2]]), torch.zeros(1, 10))
    assert torch.isfinite(scores).all()


def test_generated_text_never_repeats_a_trigram_and_plain_greedy_may():
    spec = resolve_models("distilgpt2")[0]
    torch.manual_seed(0)
    model, tok = build_scratch(spec, ["the rung latches the coil and the timer"] * 20, 300, TINY["causal"])
    prompts = ["the rung latches", "the timer and the coil the rung"]

    def grams(cfg):
        out = []
        for g in generate(model, tok, prompts, "causal", cfg, 64):
            ids = g.ids
            tri = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
            out.append((len(tri), len(set(tri))))
        return out

    plain = grams(GenerateConfig(max_new_tokens=40, batch_size=2))
    banned = grams(GenerateConfig(max_new_tokens=40, batch_size=2, no_repeat_ngram_size=3))
    assert any(n > unique for n, unique in plain)  # an untrained model loops
    assert all(n == unique for n, unique in banned)


import json  # noqa: E402

import pytest  # noqa: E402

from wmg.data import bundled_data  # noqa: E402
from wmg.generate import LocationSpan, excerpt_ids  # noqa: E402
from wmg.parse import location_in_excerpt, parse_output  # noqa: E402


def _lines(n=60):
    with open(bundled_data()) as fh:
        return [json.loads(line) for line in list(fh)[:n]]


@pytest.mark.parametrize("name", ["flan-t5-small", "distilgpt2"])
def test_location_span_lets_only_a_span_of_the_excerpt_be_written(name):
    """Decode greedily from random scores through the constraint, with each architecture's
    scratch tokenizer: whatever the scores, the location parsed from the text is a span of the
    excerpt, and it starts at a word."""
    spec = resolve_models(name)[0]
    lines = _lines()
    _, tok = build_scratch(spec, [x["input"] + " " + x["output"] for x in lines], 800,
                           TINY["seq2seq" if spec.type == "seq2seq" else "causal"])
    gen = torch.Generator().manual_seed(0)
    head = tok(" gadget_type: Timing/Synchronization gadget; location:", add_special_tokens=False)["input_ids"]
    for x in lines[:12]:
        proc = LocationSpan(tok, [excerpt_ids(tok, x["input"], spec.type)], start=1)
        ids = [0] + head  # a start token, then what the model wrote before the location
        stop = list(proc.closers | {tok.eos_token_id})
        for step in range(40):
            raw = torch.randn(1, len(tok), generator=gen)
            raw[0, stop] += -100.0 if step < 6 else 0.0  # write a few tokens before the field may close
            scores = proc(torch.tensor([ids]), raw)
            nxt = int(scores.argmax())
            ids.append(nxt)
            if proc.state[0] == "after" or nxt == tok.eos_token_id:
                break
        text = tok.decode(ids[1:], skip_special_tokens=True) + " explanation: x"
        loc = parse_output(text).location
        assert loc, text
        assert location_in_excerpt(loc, x["input"]), (loc, x["input"])
        assert f" {loc.split()[0]}" in " " + " ".join(x["input"].split())  # begins at a word


def test_location_span_frees_the_field_after_a_semicolon_and_leaves_other_fields_alone():
    spec = resolve_models("distilgpt2")[0]
    lines = _lines()
    _, tok = build_scratch(spec, [x["input"] + " " + x["output"] for x in lines], 800, TINY["causal"])
    proc = LocationSpan(tok, [excerpt_ids(tok, lines[0]["input"], "causal")], start=0)
    before = tok(" gadget_type: Timing", add_special_tokens=False)["input_ids"]
    scores = proc(torch.tensor([before]), torch.zeros(1, len(tok)))
    assert torch.isfinite(scores).all()  # before `location:` nothing is constrained
    ids = tok(" gadget_type: Timing; location:", add_special_tokens=False)["input_ids"]
    scores = proc(torch.tensor([ids]), torch.zeros(1, len(tok)))
    allowed = set(torch.isfinite(scores[0]).nonzero().flatten().tolist())
    assert allowed < set(range(len(tok))) and tok.eos_token_id in allowed
    semi = tok(";", add_special_tokens=False)["input_ids"]
    assert len(semi) == 1 and semi[0] in allowed
    ids += [next(iter(allowed - {tok.eos_token_id} - proc.closers))] + semi
    scores = proc(torch.tensor([ids[:-1]]), torch.zeros(1, len(tok)))
    scores = proc(torch.tensor([ids]), torch.zeros(1, len(tok)))
    assert proc.state[0] == "after" and torch.isfinite(scores).all()
