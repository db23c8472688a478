"""Peak memory of a scratch training that keeps its best epoch: the kept weights held as a copy in
memory (the code before, and `train()` without `keep_dir`) against a file beside the checkpoints
(`keep_dir`, how `wmg train` trains now), side by side.

Each variant runs in a fresh process: the published architecture with the scratch vocabulary
(4000) and its scratch defaults (no copy head, which adds 1.2 M parameters to distilgpt2), trained
for 2 epochs on the first N lines of the bundled data, every epoch scored equal so that each one is
kept (epoch 1's weights wait through epoch 2, as a kept epoch waits through the later ones in a
run). The two variants' final weights are checked equal.

    python benchmarks/kept_memory.py [--model distilgpt2|flan-t5-small] [--lines 48]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile

import torch


def run(variant: str, model_name: str, lines: int) -> dict:
    from wmg.config import REGISTRY, SCRATCH_DEFAULTS
    from wmg.data import bundled_data, load_jsonl
    from wmg.device import PeakMemory
    from wmg.models import build_scratch, fuse_gelu, set_dropout
    from wmg.pipeline import encode_all, tokenizer_corpus
    from wmg.train import train

    spec = REGISTRY[model_name]
    data = load_jsonl(bundled_data())[:lines]
    torch.manual_seed(0)
    model, tok = build_scratch(spec, tokenizer_corpus(data), vocab_size=4000)
    cfg = SCRATCH_DEFAULTS[spec.type].with_(epochs=2, copy_head="off", copy_scope="everywhere", copy_vocab_loss=0.0,
                                            precision="bf16")
    if cfg.dropout is not None:  # as the pipeline prepares a model for training
        set_dropout(model, cfg.dropout)
    fuse_gelu(model)
    enc = encode_all(spec, tok, data, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        memory = PeakMemory()
        result = train(model, enc, cfg, spec.type, tok.pad_token_id, select=lambda m: (0.0,), progress=False,
                       keep_dir=tmp if variant == "file" else None)
        peak = memory.mb()
    digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    return {"variant": variant, "peak_rss_mb": peak, "chosen_epoch": result.chosen_epoch, "weights": digest[:16],
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["distilgpt2", "flan-t5-small"], default="distilgpt2")
    ap.add_argument("--lines", type=int, default=48)
    ap.add_argument("--variant", choices=["memory", "file"], help=argparse.SUPPRESS)  # one child process
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(run(a.variant, a.model, a.lines)))
        return
    out = {}
    for variant in ("memory", "file"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", a.model, "--lines", str(a.lines)]
        out[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    m, f = out["memory"], out["file"]
    if m["weights"] != f["weights"]:
        sys.exit(f"the two variants' final weights differ: {m['weights']} against {f['weights']}")
    print(f"{a.model} ({m['parameters']:,} parameters), 2 epochs on {a.lines} lines, each epoch kept, bf16:")
    print(f"  kept weights in memory (a copy):    {m['peak_rss_mb']:.0f} MB peak")
    print(f"  kept weights in a file (keep_dir):  {f['peak_rss_mb']:.0f} MB peak")
    print(f"  ratio file / memory: {f['peak_rss_mb'] / m['peak_rss_mb']:.2f}; saved "
          f"{m['peak_rss_mb'] - f['peak_rss_mb']:.0f} MB (the copy: {m['parameters'] * 4 / 1e6:.0f} MB in fp32); "
          f"same final weights ({m['weights']})")


if __name__ == "__main__":
    main()
