"""Peak memory of one training step of distilgpt2 with a location-scoped copy head: the mixture
made at the location field's positions alone (wmg.copyhead._mix, today) against the mixture made
at every position and then kept inside the field (the code before), side by side.

Each variant runs in a fresh process (so that one's allocations do not raise the other's peak):
the distilgpt2 architecture with the scratch vocabulary (4000) and `--copy-head span --copy-scope
location`, a batch of 8 rows of L tokens (the default causal limit, 768: the longest batches of
an epoch), an excerpt, and an answer whose location field covers 20 positions; forward under the
training's autocast, the training's token losses (label weight, the vocabulary term of
`--copy-vocab-loss 1`), backward. The two variants' log p are checked equal first.

    python benchmarks/copy_memory.py [--length 768] [--batch 8] [--precision bf16|fp32]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys

import torch

from wmg import copyhead
from wmg.config import REGISTRY
from wmg.copyhead import GPT2WithCopy
from wmg.models import build_config

OPENS, CLOSES, MARKER, CLOSER = [20], [21], [10, 11], [12]  # token ids standing for wmg.prompts' markers


def batch(rows: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(30, 4000, (rows, length), generator=g)
    answer = length - 100
    ids[:, 5] = OPENS[0]
    ids[:, answer - 1] = CLOSES[0]
    ids[:, answer + 30:answer + 32] = torch.tensor(MARKER)
    ids[:, answer + 52] = CLOSER[0]  # the field: 20 positions and the closer's
    labels = ids.clone()
    labels[:, :answer] = -100
    weights = (labels != -100).float()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "weights": weights}


def model() -> GPT2WithCopy:
    spec = REGISTRY["distilgpt2"]
    cfg = build_config(spec, 4000, 0, 0, dict(copy_head="span"))
    cfg.copy_region, cfg.copy_field = [OPENS, CLOSES], [MARKER, CLOSER]
    torch.manual_seed(0)
    return GPT2WithCopy(cfg)


def step(variant: str, rows: int, length: int, precision: str) -> dict:
    from wmg.device import PeakMemory, autocast
    from wmg.train import token_losses

    net, b = model(), batch(rows, length)
    if variant == "no head":
        from transformers import GPT2LMHeadModel
        torch.manual_seed(0)
        net = GPT2LMHeadModel(net.config)
    net.train()
    with full_mixture() if variant == "full" else contextlib.nullcontext():
        memory = PeakMemory()
        with autocast(precision, "cpu"):
            ce, extra, n = token_losses(net, b, "causal", vocab_loss=0.0 if variant == "no head" else 1.0)
        (ce if extra is None else ce + extra).div(n).backward()
    return {"variant": variant, "peak_rss_mb": memory.mb(), "loss": round(float(ce / n), 5)}


@contextlib.contextmanager
def full_mixture():
    """The code before, while inside: the mixture made at every position, then kept inside the field."""
    original = copyhead._mix

    def mix(m, logits, h, keys, ids, allowed, asked=None, text=None, field=None):
        mixed = original(m, logits, h, keys, ids, allowed, asked, text)
        return mixed if field is None else torch.where(field[..., None], mixed, logits.float().log_softmax(-1))

    copyhead._mix = mix
    try:
        yield
    finally:
        copyhead._mix = original


def check_equal() -> None:
    net, b = model(), batch(2, 160)
    net.eval()
    with torch.no_grad():
        scoped = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        with full_mixture():
            full = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    if not torch.allclose(scoped, full, atol=1e-5):
        sys.exit("the two variants' log p differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=768)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--variant", choices=["scoped", "full", "no head"], help=argparse.SUPPRESS)  # one child process
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(step(a.variant, a.batch, a.length, a.precision)))
        return
    check_equal()
    out = {}
    for variant in ("no head", "full", "scoped"):
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(a.batch), "--length", str(a.length),
               "--precision", a.precision]
        out[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    f, s, o = out["full"], out["scoped"], out["no head"]
    print(f"one training step, distilgpt2 + span copy head scoped to the location, batch {a.batch} x {a.length} "
          f"tokens, {a.precision}:")
    print(f"  no copy head (the plain model):                {o['peak_rss_mb']:.0f} MB (loss {o['loss']})")
    print(f"  mixture at every position, kept in the field: {f['peak_rss_mb']:.0f} MB (loss {f['loss']})")
    print(f"  mixture at the field's positions alone:        {s['peak_rss_mb']:.0f} MB (loss {s['loss']})")
    print(f"  ratio scoped / full: {s['peak_rss_mb'] / f['peak_rss_mb']:.2f}; "
          f"the head's cost over the plain model: {f['peak_rss_mb'] - o['peak_rss_mb']:.0f} MB before, "
          f"{s['peak_rss_mb'] - o['peak_rss_mb']:.0f} MB now")


if __name__ == "__main__":
    main()
