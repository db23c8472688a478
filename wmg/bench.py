"""`wmg bench`: the toolkit against the tutorial's way, side by side in one invocation.

For each model, on the same machine, the same examples and the same initial
weights:

* training: the toolkit's loop (dynamic padding, length-grouped micro-batches,
  bf16 autocast where the CPU has it, fused AdamW) against the tutorial's way
  (HF Trainer over a `datasets.Dataset`, batch 1, gradient accumulation 4,
  padding to max length 512/256 for T5 and 768 for GPT-2, fp32), for the same
  number of optimizer steps at the same effective batch (4) and learning-rate
  schedule. Both final models are then scored with one fp32 loss function on the
  same examples, so a speedup cannot come from doing less work.
* generation: the toolkit's batched greedy decoding against one example at a
  time with `model.generate(max_new_tokens=256)`, both in fp32, with every
  differing output listed.
* model FLOPs utilisation of the toolkit's training: 6 x non-embedding
  parameters x tokens plus attention, over a matmul peak measured in this run.
* peak resident memory of a two-model `wmg train` run in a subprocess.

The baseline needs `datasets` and `accelerate` (`pip install 'wmg[bench]'`).
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .batching import IGNORE, Encoded, fit
from .config import REGISTRY, SCRATCH_DEFAULTS, ConfigError, GenerateConfig, ModelSpec
from .data import bundled_data, load_jsonl
from .prompts import causal_answer, seq2seq_prompt

Echo = Callable[[str], None]
TUTORIAL_LENGTHS = {"seq2seq": (512, 256), "causal": (768, None)}


@dataclass
class TrainSide:
    seconds: float
    examples_per_s: float
    tokens_per_s: float  # real (non-padding) tokens
    padded_tokens_per_s: float  # what the loop actually computed on
    final_loss: float  # fp32 loss of the final model on the training examples, same function for both


@dataclass
class GenSide:
    seconds: float
    examples_per_s: float
    new_tokens_per_s: float
    new_tokens: int


@dataclass
class ModelBench:
    model: str
    parameters: int
    non_embedding_parameters: int
    steps: int
    examples: int
    precision: str
    toolkit_train: TrainSide | None = None
    baseline_train: TrainSide | None = None
    train_speedup: float | None = None
    loss_difference: float | None = None
    toolkit_gen: GenSide | None = None
    baseline_gen: GenSide | None = None
    gen_speedup: float | None = None
    identical_outputs: int = 0
    compared_outputs: int = 0
    differences: list[dict] = field(default_factory=list)
    achieved_tflops: float | None = None
    mfu: float | None = None


def _require_baseline():
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError("the tutorial-style baseline needs datasets and accelerate: pip install 'wmg[bench]'") from None


def matmul_peak(precision: str, n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of an n x n matmul in this precision on this machine (best of `repeat`)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def non_embedding(spec: ModelSpec, model) -> tuple[int, int, int]:
    """(non-embedding parameters, of which encoder, of which decoder) — decoder is everything for causal models."""
    total = sum(p.numel() for p in model.parameters())
    if spec.type == "seq2seq":
        emb = model.shared.weight.numel() + (0 if model.lm_head.weight is model.shared.weight
                                              else model.lm_head.weight.numel())
        enc = sum(p.numel() for n, p in model.encoder.named_parameters() if "embed_tokens" not in n)
        return total - emb, enc, total - emb - enc
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return total - emb, 0, total - emb


def train_flops(spec: ModelSpec, model, batches: list[dict]) -> float:
    """6 x non-embedding parameters x (padded) tokens, plus attention score and value products (x3 for backward)."""
    _, enc_p, dec_p = non_embedding(spec, model)
    cfg = model.config
    flops = 0.0
    for b in batches:
        bs, length = b["input_ids"].shape
        if spec.type == "seq2seq":
            dec_len = b["labels"].shape[1]
            d = cfg.num_heads * cfg.d_kv
            flops += 6 * (enc_p * bs * length + dec_p * bs * dec_len)
            attn = cfg.num_layers * length * length + cfg.num_decoder_layers * (dec_len * dec_len + dec_len * length)
            flops += 12 * bs * attn * d
        else:
            flops += 6 * dec_p * bs * length + 12 * bs * cfg.n_layer * length * length * cfg.n_embd
    return flops


def _encode_tutorial(spec: ModelSpec, tok, examples) -> list[dict]:
    """Tokenized rows padded to the tutorial's fixed lengths; loss on the whole causal sequence."""
    rows = []
    if spec.type == "seq2seq":
        max_in, max_tgt = TUTORIAL_LENGTHS["seq2seq"]
        for e in examples:
            src = fit(tok(seq2seq_prompt(e.instruction, e.input))["input_ids"], max_in)
            tgt = tok(e.output)["input_ids"][:max_tgt]
            rows.append({"input_ids": src + [tok.pad_token_id] * (max_in - len(src)),
                         "attention_mask": [1] * len(src) + [0] * (max_in - len(src)),
                         "labels": tgt + [IGNORE] * (max_tgt - len(tgt))})
    else:
        max_len = TUTORIAL_LENGTHS["causal"][0]
        for e in examples:
            ids = tok(seq2seq_prompt(e.instruction, e.input) + causal_answer(e.output),
                      add_special_tokens=False)["input_ids"][: max_len - 1] + [tok.eos_token_id]
            pad = max_len - len(ids)
            rows.append({"input_ids": ids + [tok.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
                         "labels": ids + [IGNORE] * pad})
    return rows


def _toolkit_encoded(spec: ModelSpec, tok, examples, cfg) -> list[Encoded]:
    from .pipeline import encode_all

    return encode_all(spec, tok, examples, cfg)


def _final_loss(spec: ModelSpec, model, encoded: list[Encoded], pad_id: int) -> float:
    """Token-mean fp32 cross-entropy over the examples, the model in eval mode: one yardstick for both sides."""
    from .batching import Collator
    from .train import evaluate_loss

    model.eval()
    cfg = SCRATCH_DEFAULTS[spec.type].with_(micro_batch_size=8, precision="fp32")
    return evaluate_loss(model, encoded, Collator(spec.type, pad_id), spec.type, cfg)


def bench_training(spec: ModelSpec, model0, tok, examples, steps: int, lr: float, precision: str, seed: int,
                   echo: Echo) -> tuple[TrainSide, TrainSide, object, float]:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from .batching import Collator, LengthGroupedBatches
    from .models import fuse_gelu
    from .train import train as toolkit_train

    n = steps * 4
    data = examples[:n]
    cfg = SCRATCH_DEFAULTS[spec.type].with_(epochs=1, micro_batch_size=4, grad_accum=1, learning_rate=lr,
                                            warmup_ratio=0.0, schedule="linear", weight_decay=0.0,
                                            precision=precision, causal_loss="full", seed=seed, log_every=0,
                                            copy_head="off", copy_scope="everywhere", copy_vocab_loss=0.0)  # model0's
    enc = _toolkit_encoded(spec, tok, data, cfg)
    real_tokens = sum(len(e.input_ids) + (len(e.labels) if spec.type == "seq2seq" else 0) for e in enc)

    # --- toolkit
    model = copy.deepcopy(model0)
    fuse_gelu(model)
    torch.manual_seed(seed)
    t = time.perf_counter()
    toolkit_train(model, enc, cfg, spec.type, tok.pad_token_id, progress=False)
    secs = time.perf_counter() - t
    # the loop's micro-batches, rebuilt from the same seeded sampler, for padded tokens and FLOPs
    batches = [Collator(spec.type, tok.pad_token_id)([enc[i] for i in b])
               for b in LengthGroupedBatches([e.size for e in enc], cfg.micro_batch_size, seed).batches()]
    flops = train_flops(spec, model, batches)
    padded = sum(b["input_ids"].numel() + (b["labels"].numel() if spec.type == "seq2seq" else 0) for b in batches)
    toolkit = TrainSide(secs, n / secs, real_tokens / secs, padded / secs,
                        _final_loss(spec, model, enc, tok.pad_token_id))
    trained = model

    # --- tutorial-style baseline
    model = copy.deepcopy(model0)
    rows = _encode_tutorial(spec, tok, data)
    ds = Dataset.from_list(rows)
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=4, learning_rate=lr,
            max_steps=steps, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            logging_steps=max(1, steps), save_strategy="no", report_to=[], use_cpu=True, seed=seed,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=ds)
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log dicts; keep stdout for results
            trainer.train()
        secs = time.perf_counter() - t
    padded_tokens = sum(len(r["input_ids"]) + (len(r["labels"]) if spec.type == "seq2seq" else 0) for r in rows)
    baseline = TrainSide(secs, n / secs, real_tokens / secs, padded_tokens / secs,
                         _final_loss(spec, model, enc, tok.pad_token_id))
    del model, trainer
    return toolkit, baseline, trained, flops


def bench_generation(spec: ModelSpec, model, tok, examples, batch_size: int, max_input: int,
                     max_new_tokens: int = 256) -> tuple[GenSide, GenSide, list[str], list[str]]:
    import torch

    from .batching import prompt_ids
    from .generate import generate

    prompts = [seq2seq_prompt(e.instruction, e.input) for e in examples]
    model.eval()
    t = time.perf_counter()
    gens = generate(model, tok, prompts, spec.type, GenerateConfig(max_new_tokens, batch_size, "fp32"), max_input)
    secs = time.perf_counter() - t
    ours = [g.text for g in gens]
    toolkit = GenSide(secs, len(prompts) / secs, sum(g.new_tokens for g in gens) / secs,
                      sum(g.new_tokens for g in gens))
    theirs, new = [], 0
    t = time.perf_counter()
    with torch.no_grad():
        for p in prompts:  # the tutorial's way: one example at a time
            ids = torch.tensor([prompt_ids(tok, p, max_input, spec.type)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
            gen = out[0, ids.shape[1]:] if spec.type == "causal" else out[0, 1:]
            gen = gen.tolist()
            if tok.eos_token_id in gen:
                gen = gen[: gen.index(tok.eos_token_id) + 1]
            new += len(gen)
            theirs.append(tok.decode(gen, skip_special_tokens=True).strip())
    secs = time.perf_counter() - t
    baseline = GenSide(secs, len(prompts) / secs, new / secs, new)
    return toolkit, baseline, ours, theirs


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_memory_of_run(args: list[str], echo: Echo) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `wmg train ARGS` in a child process.

    Read from the child's own high-water mark (VmHWM) while it runs: getrusage's
    RUSAGE_CHILDREN would report this large benchmark process's size, which a forked
    child carries until it execs.
    """
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "wmg", "train", "--db", os.path.join(work, "r.db"), "--checkpoints",
               os.path.join(work, "ckpt"), "--report", os.path.join(work, "report.json"), "--no-progress",
               "--no-show-examples", *args]
        echo(f"  running: wmg train {' '.join(args)}")
        t = time.perf_counter()
        with open(os.path.join(work, "log.txt"), "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            peak = 0.0
            while proc.poll() is None:
                peak = max(peak, _vm_hwm_mb(proc.pid))
                time.sleep(0.2)
        secs = time.perf_counter() - t
        if proc.returncode != 0:
            tail = open(os.path.join(work, "log.txt")).read().strip().splitlines()[-1:]
            raise ConfigError(f"the memory run failed: {tail}")
    return peak, secs


def run(models: list[str], quick: bool, data: str | Path | None = None, seed: int = 42, precision: str = "auto",
        memory: bool = True, echo: Echo = print) -> dict:
    import platform

    import torch

    from .device import physical_cores, resolve_precision
    from .models import build_scratch
    from .pipeline import seed_everything, tokenizer_corpus

    _require_baseline()
    torch.set_num_threads(physical_cores())
    prec = resolve_precision(precision, "cpu")
    examples = load_jsonl(data or bundled_data())
    steps = 4 if quick else 25
    gen_n = 4 if quick else 32
    train_ex, gen_ex = examples[: steps * 4], examples[-gen_n:]
    peak_prec = matmul_peak(prec)
    peak_fp32 = matmul_peak("fp32") if prec != "fp32" else peak_prec
    echo(f"matmul peak on this machine: {peak_prec / 1e12:.2f} TFLOP/s {prec}, {peak_fp32 / 1e12:.2f} TFLOP/s fp32")
    results = []
    for name in models:
        spec = REGISTRY[name]
        seed_everything(seed)
        model0, tok = build_scratch(spec, tokenizer_corpus(examples))
        lr = SCRATCH_DEFAULTS[spec.type].learning_rate
        ne, _, _ = non_embedding(spec, model0)
        mb = ModelBench(name, sum(p.numel() for p in model0.parameters()), ne, steps, steps * 4, prec)
        echo(f"[{name}] training {steps} optimizer steps (effective batch 4) both ways...")
        mb.toolkit_train, mb.baseline_train, trained, flops = bench_training(
            spec, model0, tok, train_ex, steps, lr, prec, seed, echo)
        mb.train_speedup = mb.toolkit_train.examples_per_s / mb.baseline_train.examples_per_s
        mb.loss_difference = mb.toolkit_train.final_loss - mb.baseline_train.final_loss
        mb.achieved_tflops = flops / mb.toolkit_train.seconds / 1e12
        mb.mfu = flops / mb.toolkit_train.seconds / peak_prec
        echo(f"[{name}] generating {gen_n} examples both ways (fp32, greedy, up to 256 new tokens)...")
        mb.toolkit_gen, mb.baseline_gen, ours, theirs = bench_generation(
            spec, trained, tok, gen_ex, GenerateConfig().batch_size, 512)
        mb.gen_speedup = mb.toolkit_gen.examples_per_s / mb.baseline_gen.examples_per_s
        mb.compared_outputs = len(ours)
        mb.identical_outputs = sum(a == b for a, b in zip(ours, theirs))
        mb.differences = [{"example": i, "toolkit": a[:300], "baseline": b[:300]}
                          for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        results.append(mb)
        del model0, trained
    mem = None
    if memory:
        args = (["--examples", "24", "--epochs", "1", "--max-new-tokens", "32"] if quick
                else ["--epochs", "1"])
        echo("peak memory of a two-model run (full-size models, training then comparison):")
        peak, secs = peak_memory_of_run(args, echo)
        mem = {"args": args, "peak_rss_mb": round(peak, 1), "seconds": round(secs, 1)}
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": {
            "cpu": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__},
        "quick": quick, "precision": prec, "matmul_peak_tflops": {prec: peak_prec / 1e12, "fp32": peak_fp32 / 1e12},
        "models": [asdict(r) for r in results], "memory": mem,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def render(res: dict) -> str:
    out = [f"wmg bench ({'quick' if res['quick'] else 'full'}) on {res['machine']['cpu']}, "
           f"{res['machine']['cores']} cores, torch {res['machine']['torch']}, {res['date']}"]
    out.append(f"matmul peak: " + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in res["matmul_peak_tflops"].items()))
    head = ("model", "what", "toolkit", "tutorial-style", "ratio")
    rows = []
    for m in res["models"]:
        tt, bt, tg, bg = m["toolkit_train"], m["baseline_train"], m["toolkit_gen"], m["baseline_gen"]
        rows += [
            (m["model"], "train examples/s", f"{tt['examples_per_s']:.2f}", f"{bt['examples_per_s']:.2f}",
             f"{m['train_speedup']:.2f}x"),
            ("", "train real tokens/s", f"{tt['tokens_per_s']:.0f}", f"{bt['tokens_per_s']:.0f}",
             f"{tt['tokens_per_s'] / bt['tokens_per_s']:.2f}x"),
            ("", f"final loss after {m['steps']} steps", f"{tt['final_loss']:.4f}", f"{bt['final_loss']:.4f}",
             f"diff {m['loss_difference']:+.4f}"),
            ("", "generate examples/s", f"{tg['examples_per_s']:.3f}", f"{bg['examples_per_s']:.3f}",
             f"{m['gen_speedup']:.2f}x"),
            ("", "generate new tokens/s", f"{tg['new_tokens_per_s']:.1f}", f"{bg['new_tokens_per_s']:.1f}",
             f"{tg['new_tokens_per_s'] / bg['new_tokens_per_s']:.2f}x"),
            ("", "identical greedy outputs", f"{m['identical_outputs']}/{m['compared_outputs']}", "", ""),
            ("", f"training MFU ({m['precision']})", f"{m['mfu']:.1%}", "", f"{m['achieved_tflops']:.3f} TFLOP/s"),
        ]
    from .console import format_rows

    out += [""] + format_rows(head, rows)
    for m in res["models"]:
        for d in m["differences"]:
            out.append(f"{m['model']} example {d['example']} differs:\n  toolkit:  {d['toolkit']!r}\n"
                       f"  baseline: {d['baseline']!r}")
    if res.get("memory"):
        mem = res["memory"]
        out.append(f"peak resident memory of `wmg train {' '.join(mem['args'])}`: {mem['peak_rss_mb']:.0f} MB "
                   f"({mem['seconds']:.0f} s)")
    return "\n".join(out)


def tables(res: dict):
    """The result as tidy tables: one record per model and measure; the machine; differing outputs."""
    from .console import Table

    rows = []
    for m in res["models"]:
        tt, bt, tg, bg = m["toolkit_train"], m["baseline_train"], m["toolkit_gen"], m["baseline_gen"]
        rows += [
            [m["model"], "train_examples_per_s", tt["examples_per_s"], bt["examples_per_s"], m["train_speedup"]],
            [m["model"], "train_tokens_per_s", tt["tokens_per_s"], bt["tokens_per_s"],
             tt["tokens_per_s"] / bt["tokens_per_s"]],
            [m["model"], f"final_loss_after_{m['steps']}_steps", tt["final_loss"], bt["final_loss"], None],
            [m["model"], "generate_examples_per_s", tg["examples_per_s"], bg["examples_per_s"], m["gen_speedup"]],
            [m["model"], "generate_new_tokens_per_s", tg["new_tokens_per_s"], bg["new_tokens_per_s"],
             tg["new_tokens_per_s"] / bg["new_tokens_per_s"]],
            [m["model"], "identical_greedy_outputs", m["identical_outputs"], m["compared_outputs"], None],
            [m["model"], f"training_mfu_{m['precision']}", m["mfu"], None, None],
            [m["model"], "training_tflops", m["achieved_tflops"], None, None],
        ]
    mem = res.get("memory") or {}
    machine = [["date", res["date"]], ["quick", res["quick"]], ["precision", res["precision"]]]
    machine += [[k, v] for k, v in res["machine"].items()]
    machine += [[f"matmul_peak_tflops_{k}", v] for k, v in res["matmul_peak_tflops"].items()]
    if mem:
        machine += [["memory_run_args", " ".join(mem["args"])], ["peak_rss_mb", mem["peak_rss_mb"]],
                    ["memory_run_seconds", mem["seconds"]]]
    diffs = [[m["model"], d["example"], d["toolkit"], d["baseline"]] for m in res["models"] for d in m["differences"]]
    return [
        Table("results", "Toolkit against the tutorial's way", ["model", "measure", "toolkit", "tutorial_style",
                                                                 "ratio"], rows,
              ["identical_greedy_outputs: toolkit = identical, tutorial_style = compared"], group=1),
        Table("machine", "Machine", ["field", "value"], machine),
        Table("differences", "Greedy outputs that differ", ["model", "example", "toolkit", "baseline"], diffs),
    ]
