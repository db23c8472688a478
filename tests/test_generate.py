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
