"""Peak memory and time of a scratch training with and without trimming the heap after optimizer
steps (`WMG_TRIM_STEPS`, `wmg.device.heap_trimmer`), side by side.

Each variant runs in a fresh process, in turn, `--repeats` times (the order alternates, so that
whatever else runs on the machine weighs on every variant alike): the model as `wmg train` builds
it by default (scratch init, the scratch defaults with its copy head, bf16), trained for one epoch
on N of the first four fifths of the bundled lines with their open-form copies, in a shuffled order
so that the batches come in many shapes, as in a run. No development slice (its generation would
dominate the time of so short a training). The variants' final weights are checked equal:
trimming must not change a number.

    python benchmarks/trim_memory.py [--model distilgpt2|flan-t5-small] [--lines 480]
        [--every 0 1 8] [--repeats 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time


def run(model_name: str, lines: int) -> dict:
    import torch

    from wmg.config import REGISTRY
    from wmg.data import bundled_data, load_jsonl
    from wmg.device import PeakMemory, setup
    from wmg.models import build, fuse_gelu, set_dropout
    from wmg.pipeline import TrainOptions, encode_all, hyperparams, scratch_overrides, tokenizer_corpus
    from wmg.recipe import open_copies
    from wmg.train import train

    setup("cpu", precision="bf16", echo=lambda *a: None)  # threads and the mmap threshold, as `wmg train`
    spec = REGISTRY[model_name]
    data = load_jsonl(str(bundled_data()))
    fit = data[: len(data) * 4 // 5]
    opts = TrainOptions(data="", models=model_name, init="scratch", precision="bf16")
    torch.manual_seed(0)
    built = build(spec, "scratch", tokenizer_corpus(fit), overrides=scratch_overrides(spec, opts),
                  echo=lambda *a: None)
    model, tok = built.model, built.tokenizer
    cfg = hyperparams(spec, "scratch", opts).with_(epochs=1, precision="bf16", dev_fraction=0.0, num_workers=0)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    fuse_gelu(model)
    enc = encode_all(spec, tok, open_copies(fit), cfg)
    random.Random(1).shuffle(enc)
    memory = PeakMemory()
    t0 = time.perf_counter()
    result = train(model, enc[:lines], cfg, spec.type, tok.pad_token_id, progress=False)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    return {"peak_rss_mb": memory.mb(), "seconds": seconds, "steps": result.steps, "weights": digest[:16],
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["distilgpt2", "flan-t5-small"], default="distilgpt2")
    ap.add_argument("--lines", type=int, default=480)
    ap.add_argument("--every", type=int, nargs="+", default=[0, 1, 8],
                    help="WMG_TRIM_STEPS of each variant (0: never)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one variant, in this process
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run(a.model, a.lines)))
        return
    out: dict[int, list[dict]] = {e: [] for e in a.every}
    for r in range(a.repeats):
        for every in (a.every if r % 2 == 0 else a.every[::-1]):
            env = dict(os.environ, WMG_TRIM_STEPS=str(every))
            cmd = [sys.executable, __file__, "--child", "--model", a.model, "--lines", str(a.lines)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
            out[every].append(res)
            print(f"  trim every {every or 'never'}: {res['peak_rss_mb']:.0f} MB peak, {res['seconds']:.1f} s "
                  f"({res['steps']} steps)", flush=True)
    digests = {r["weights"] for runs in out.values() for r in runs}
    if len(digests) != 1:
        sys.exit(f"the variants' final weights differ: {sorted(digests)}")
    base = out[a.every[0]]
    b_peak = sum(r["peak_rss_mb"] for r in base) / len(base)
    b_sec = sum(r["seconds"] for r in base) / len(base)
    print(f"{a.model}, 1 epoch on {a.lines} lines in many shapes, bf16, {base[0]['threads']} thread(s), "
          f"{a.repeats} repeat(s) per variant, same final weights ({digests.pop()}):")
    for every, runs in out.items():
        peak = sum(r["peak_rss_mb"] for r in runs) / len(runs)
        sec = sum(r["seconds"] for r in runs) / len(runs)
        print(f"  trim every {str(every) + ' step(s)' if every else 'never':>10}: peak {peak:6.0f} MB "
              f"({peak / b_peak:.2f}x), time {sec:6.1f} s ({sec / b_sec:.2f}x)")


if __name__ == "__main__":
    main()
