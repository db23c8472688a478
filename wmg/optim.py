"""AdamW with updates scaled by each weight matrix's own size (nanoT5's AdamWScale).

T5 is initialised with very different scales per matrix (embeddings std 1, attention queries
std (d_model * d_kv) ** -0.5, about 0.0055 in T5-small) and was trained with Adafactor, whose
updates are relative to a parameter's root-mean-square. Plain AdamW moves every weight by about
the learning rate per step, which for the small query matrices is a large relative change, and a
scratch T5 trained that way learned its output format but never how to read the encoder (gold-type
accuracy at chance, README "Scratch recipe"). Nawrot (2023, "nanoT5") made T5 pretraining from
scratch work with AdamW by multiplying each step by max(1e-3, RMS(parameter)), as Adafactor's
`scale_parameter` does, with a correspondingly larger learning rate (2e-2 there).
"""
from __future__ import annotations

import math

import torch


class AdamWScale(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                rms = float(p.norm(2)) / math.sqrt(p.numel())
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size * max(1e-3, rms))
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
        return loss
