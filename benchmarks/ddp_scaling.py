"""What DistributedDataParallel over gloo buys on this machine, and what it would buy across machines.

Side by side in one invocation, for each model at its published size (random weights, the
scratch vocabulary size, wmg's precision for this CPU):
- one process using every physical core, optimizer steps of `--batch` rows;
- `torchrun --standalone --nproc-per-node N`: N processes sharing the cores, each step's rows
  split among them as `wmg train` does under torchrun (DDP sums the gradients);
- the time of one all-reduce of the model's gradients among the N local processes.

It prints seconds per step, the speed-up of N processes over one, the all-reduce time and the
gradient size, and, on paper, the speed-up of M machines like this one (one process each) joined
by a network of B Gb/s: a ring all-reduce moves 2 (M-1)/M of the gradient bytes in and out of
every machine per step, so a step takes t1/M + 2 (M-1)/M * bytes / B + the latency measured here.

    python benchmarks/ddp_scaling.py [--models flan-t5-small,distilgpt2] [--steps 8] [--batch 8] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def build(name: str, vocab: int):
    from wmg.config import REGISTRY
    from wmg.models import build_config, fuse_gelu, model_from_config

    spec = REGISTRY[name]
    model = model_from_config(spec, build_config(spec, vocab, 0, 1))
    fuse_gelu(model)
    return spec, model


def batch(spec, rows: int, length: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if spec.type == "seq2seq":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(2, vocab, (rows, 48), generator=g)}
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}


def measure(name: str, steps: int, rows: int, length: int, vocab: int, precision: str) -> dict:
    """Seconds per optimizer step (after two warm-up steps); under torchrun each rank takes its share."""
    from wmg.distributed import Ranks
    from wmg.device import autocast
    from wmg.train import make_optimizer, token_loss_sum
    from wmg.config import REGISTRY, defaults_for

    ranks = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        ranks = Ranks(dist.get_rank(), dist.get_world_size())
    torch.manual_seed(0)
    spec, model = build(name, vocab)
    net = model
    if ranks:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, forward_sync_buffers=False)
    opt = make_optimizer(model, defaults_for(REGISTRY[name], "scratch"))  # the scratch recipe's optimizer
    full = batch(spec, rows, length, vocab, 0)
    start, stop = ranks.rows(rows) if ranks else (0, rows)
    mine = {k: v[start:stop] for k, v in full.items()}
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with autocast(precision, "cpu"):
            loss, n = token_loss_sum(net, mine, spec.type)
        (loss / max(1, n)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    out = {"model": name, "seconds_per_step": sum(times) / len(times), "threads": torch.get_num_threads(),
           "parameters": sum(p.numel() for p in model.parameters())}
    if ranks:
        import torch.distributed as dist

        flat = torch.zeros(out["parameters"], dtype=torch.float32)
        dist.barrier()
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            dist.all_reduce(flat)
            reps.append(time.perf_counter() - t0)
        out["allreduce_seconds"] = sorted(reps)[len(reps) // 2]
        out["seconds_per_step"] = max(_gather(out["seconds_per_step"]))
        if ranks.rank != 0:
            out = None
        dist.destroy_process_group()
    return out


def _gather(x: float) -> list[float]:
    import torch.distributed as dist

    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, x)
    return box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="flan-t5-small,distilgpt2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="rows per optimizer step (wmg's scratch default: 8)")
    ap.add_argument("--length", type=int, default=256, help="input tokens per row")
    ap.add_argument("--vocab", type=int, default=4100, help="the scratch tokenizer's size")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from wmg.device import choose_precision, physical_cores

    precision = choose_precision("auto", "cpu")[0]
    if a.worker:
        res = measure(a.worker, a.steps, a.batch, a.length, a.vocab, precision)
        if res is not None:
            print("RESULT " + json.dumps(res), flush=True)
        return
    rows = []
    for name in a.models.split(","):
        common = [__file__, "--worker", name, "--steps", str(a.steps), "--batch", str(a.batch),
                  "--length", str(a.length), "--vocab", str(a.vocab)]
        one = _run([sys.executable, *common], dict(os.environ, OMP_NUM_THREADS=str(physical_cores())))
        many = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(a.nproc), *common], dict(os.environ, OMP_NUM_THREADS=str(max(1, physical_cores() // a.nproc))))
        grad_mb = one["parameters"] * 4 / 1e6
        row = {"model": name, "precision": precision, "rows_per_step": a.batch, "tokens_per_row": a.length,
               "one_process_s": one["seconds_per_step"], "one_process_threads": one["threads"],
               f"{a.nproc}_processes_s": many["seconds_per_step"], "threads_each": many["threads"],
               "speedup": one["seconds_per_step"] / many["seconds_per_step"],
               "allreduce_ms": many["allreduce_seconds"] * 1e3, "gradient_mb": grad_mb}
        for machines in (2, 4):
            for gbps in (1, 10):
                t1 = one["seconds_per_step"]
                comm = 2 * (machines - 1) / machines * grad_mb * 8 / (gbps * 1e3) + many["allreduce_seconds"]
                row[f"paper_{machines}x_{gbps}gbps"] = t1 / (t1 / machines + comm)
        rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['model']} ({r['precision']}, {r['rows_per_step']} rows x {r['tokens_per_row']} tokens per step):")
        print(f"  1 process x {r['one_process_threads']} threads: {r['one_process_s']:.3f} s/step")
        print(f"  {a.nproc} processes x {r['threads_each']} thread(s), DDP over gloo: {r[f'{a.nproc}_processes_s']:.3f} "
              f"s/step -> speed-up {r['speedup']:.2f}x")
        print(f"  all-reduce of the gradients ({r['gradient_mb']:.0f} MB fp32) among them: {r['allreduce_ms']:.0f} ms")
        print("  on paper, M machines like this one: " + ", ".join(
            f"{m} x {g} Gb/s {r[f'paper_{m}x_{g}gbps']:.2f}x" for m in (2, 4) for g in (1, 10)))


def _run(cmd: list[str], env: dict) -> dict:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{r.stderr[-3000:]}")
    return json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])


if __name__ == "__main__":
    main()
