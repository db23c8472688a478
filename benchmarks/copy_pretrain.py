"""Can a scratch model learn to copy from a one-time pretraining on local technical English?

The lever of issue 13 "a one-time local pretraining on text every machine has offline", aimed at
the skill the scratch models lack (locations quoted from the excerpt): the docstrings of Python's
own standard library (paragraphs of 12 words or more, joined into passages of 40 to 120 words)
train a tokenizer of the model's family and then the published architecture from random
weights, on a half-and-half mixture of two copying tasks drawn afresh for every example:

- reconstruction (after BART, Lewis et al. 2020): T5 reads the passage with T5's span corruption
  (15% of the tokens in spans of mean length 3, sentinels) and writes the whole original passage;
  GPT-2 reads the passage and then writes it again (induction, Olsson et al. 2022);
- cue quotes: the task's prompt around the passage, asking for the run of words between a
  start and an end cue (`recipe.CUE_QUOTE`), answered `location: <the run>`.

Every `--probe-every` steps, the probe asks for cue quotes of 60 gadget excerpts of the bundled
data (text the pretraining never saw) and counts exact answers and answers that are a span of the
excerpt. Passages, order and probes are seeded (seed 0); bf16 autocast where the CPU has it.

    python benchmarks/copy_pretrain.py --model flan-t5-small --steps 1500 --out /tmp/base
"""
from __future__ import annotations

import argparse
import ast
import random
import re
import sysconfig
import time
from pathlib import Path

import torch

from wmg.batching import Collator, Encoded, encode_causal, encode_seq2seq, fit
from wmg.config import REGISTRY, SCRATCH_DEFAULTS
from wmg.data import load_jsonl
from wmg.device import autocast, setup
from wmg.models import build_config, fuse_gelu, model_from_config, set_dropout, train_tokenizer
from wmg.prompts import causal_answer, seq2seq_prompt
from wmg.recipe import cue_instruction, quote_span, sentinel_tokens, span_corrupt
from wmg.train import lr_lambda, make_optimizer, token_loss_sum

SKIP = {"test", "tests", "site-packages", "idle_test", "lib2to3"}


def docstring_passages(shortest: int = 40, longest: int = 120) -> list[str]:
    """Passages of the standard library's docstrings (tests and site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paras = []
    for path in sorted(root.rglob("*.py")):
        if SKIP & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for para in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    if len(para.split()) >= 12:
                        paras.append(" ".join(para.split()))
    passages, current = [], []
    for para in paras:
        current += para.split()
        if len(current) >= shortest:
            passages.append(" ".join(current[:longest]))
            current = []
    return passages


def cue_prompt(span: str, text: str) -> str:
    return seq2seq_prompt(cue_instruction(span), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="flan-t5-small", choices=["flan-t5-small", "distilgpt2"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--probe-every", type=int, default=250)
    ap.add_argument("--data", default="data/weird_machine_gadgets.jsonl", help="excerpts for the probe")
    ap.add_argument("--out", default=None, help="save the pretrained model and tokenizer here")
    a = ap.parse_args()
    precision = setup("cpu", "unix", print, precision="auto").precision
    torch.manual_seed(0)
    rng = random.Random(0)
    passages = docstring_passages()
    spec = REGISTRY[a.model]
    kind = spec.type
    tok = train_tokenizer(spec, passages, a.vocab)
    model = model_from_config(spec, build_config(spec, len(tok), tok.pad_token_id, tok.eos_token_id))
    fuse_gelu(model)
    set_dropout(model, 0.0)
    sentinels = tok.convert_tokens_to_ids(sentinel_tokens()) if kind == "seq2seq" else None
    bodies = [fit(tok(t, add_special_tokens=False)["input_ids"], 200) for t in passages]
    print(f"{len(passages)} passages, {sum(map(len, bodies))} tokens, vocabulary {len(tok)}, {precision}")

    def example(i: int) -> Encoded:
        text, ids = passages[i], bodies[i]
        if rng.random() < 0.5:
            if kind == "causal":
                full = ids + [tok.eos_token_id] + ids + [tok.eos_token_id]
                return Encoded(full, list(full))
            inp, _ = span_corrupt(ids, sentinels, tok.eos_token_id, rng)
            return Encoded(inp, ids + [tok.eos_token_id])
        for _ in range(20):
            span = quote_span(text, rng)
            if ";" not in span:
                break
        if kind == "causal":
            return encode_causal(tok, cue_prompt(span, text), causal_answer(f"location: {span}"), 768, 64, "answer")
        return encode_seq2seq(tok, cue_prompt(span, text), f"location: {span}", 512, 64)

    excerpts = [e.input for e in load_jsonl(a.data)[:60]]

    @torch.inference_mode()
    def probe() -> tuple[int, int]:
        model.eval()
        r = random.Random(5)
        exact = inside = 0
        for text in excerpts:
            span = quote_span(text, r)
            ids = tok(cue_prompt(span, text), return_tensors="pt", add_special_tokens=kind == "seq2seq").input_ids
            if kind == "causal":
                out = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.eos_token_id)
                answer = tok.decode(out[0, ids.size(1):], skip_special_tokens=True)
            else:
                answer = tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0], skip_special_tokens=True)
            quoted = answer.split(";")[0].split("location:", 1)[-1].strip()
            exact += quoted == span
            inside += bool(quoted) and quoted in text
        model.train()
        return exact, inside

    cfg = SCRATCH_DEFAULTS[kind].with_(micro_batch_size=a.batch_size, precision=precision, copy_vocab_loss=0.0)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(a.steps, int(0.05 * a.steps), "cosine"))
    collate = Collator(kind, tok.pad_token_id)
    model.train()
    start, losses, order = time.time(), [], []
    for step in range(1, a.steps + 1):
        if len(order) < a.batch_size:
            more = list(range(len(passages)))
            rng.shuffle(more)
            order += more
        batch = collate([example(order.pop()) for _ in range(a.batch_size)])
        with autocast(precision, "cpu"):
            loss, n = token_loss_sum(model, batch, kind)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / n)
        if step % 25 == 0:
            print(f"step {step} loss {sum(losses[-25:]) / 25:.3f} {(time.time() - start) / step:.2f} s/step", flush=True)
        if step % a.probe_every == 0 or step == a.steps:
            exact, inside = probe()
            print(f"probe at step {step}: {exact}/{len(excerpts)} cue quotes exact, {inside}/{len(excerpts)} "
                  "a span of the excerpt", flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(a.out)
        tok.save_pretrained(a.out)
    print(f"{a.steps} steps in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
