"""The training loop: plain PyTorch, shared by seq2seq and causal models.

Gradient accumulation is a nested loop: for each optimizer step, for each
micro-batch of its group, forward and backward; then clip, step, schedule and
zero the gradients once.

Resumable: `checkpoint(state, reason)` is called with everything needed to go on
(optimizer, scheduler, RNG states, step, epoch, position in the epoch and the
epoch's batch order) at the end of every epoch, and after the current step when
`should_stop()` turns true (or, at an epoch's end, before the validation loss and between
the development slice's generation batches), after which `TrainingInterrupted` is raised. Given that
state back as `resume`, the loop continues with the very next optimizer step and
produces the same losses as a run that never stopped. Each token's loss is divided by the number of scored
tokens in the whole group, so the accumulated gradient equals the gradient of
the group as one batch (a plain mean over micro-batches would weight short
micro-batches more). The loop knows nothing of the database or the CLI:
progress goes to the `on_step` / `on_epoch` callbacks.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .batching import IGNORE, Collator, Encoded, LengthGroupedBatches
from .config import TrainConfig
from .device import autocast


@dataclass
class StepLog:
    step: int
    epoch: float
    loss: float
    lr: float
    tokens: int


@dataclass
class TrainResult:
    steps: int
    final_loss: float  # mean training loss over the last epoch
    mean_loss: float  # mean training loss over all steps (the tutorial's "train_loss")
    seconds: float
    examples_seen: int
    tokens_seen: int
    effective_batch_size: int
    epoch_val_losses: list[float | None] = field(default_factory=list)
    epoch_train_losses: list[float] = field(default_factory=list)
    epoch_scores: list[tuple[float, ...]] = field(default_factory=list)  # `select`'s score per epoch
    chosen_epoch: int | None = None  # the best epoch on `select` (None: the last, unscored)
    # Checkpoint averaging (cfg.average_epochs): the average of the last epochs' weights, its
    # `select` score and validation loss, and whether the model holds it (else the chosen epoch's).
    average_score: tuple[float, ...] | None = None
    average_val_loss: float | None = None
    kept_average: bool = False


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights, to go on exactly where a training stopped: the
    position (`epoch`, `next_group`: the accumulation groups of that epoch already trained; `epoch`
    == the epochs means the average of the last epochs is still to be scored), the epoch's batch
    order (checked against the sampler's on resume), the losses and counts so far, the optimizer's,
    scheduler's and RNGs' states, the epoch scores with the best epoch's weights (None where the
    checkpoint's own weights are the best), and the running average of the last epochs' weights.
    Checkpoints store it as a plain dict (`as_dict`), which `torch.load(weights_only=True)` reads;
    `from_dict` fills what older checkpoints lack."""
    step: int
    epoch: int
    next_group: int
    total_steps: int
    batches: list[list[int]]
    epoch_losses: list[float]
    all_losses: list[float]
    epoch_train: list[float]
    epoch_val: list[float | None]
    examples_seen: int
    tokens_seen: int
    seconds: float
    optimizer: dict
    scheduler: dict
    rng: dict
    epoch_scores: list[list[float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    average_weights: dict[str, torch.Tensor] | None = None
    average_count: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy, unlike asdict

    @classmethod
    def from_dict(cls, d: "dict | TrainState") -> "TrainState":
        if isinstance(d, cls):
            return d
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class TrainingInterrupted(Exception):
    """Training stopped on request after a checkpoint of its state was written."""

    def __init__(self, step: int):
        super().__init__(f"training stopped after step {step}")
        self.step = step


def token_loss_sum(model, batch: dict[str, torch.Tensor], model_type: str) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over scored tokens, and their count."""
    ce, _, n = token_losses(model, batch, model_type)
    return ce, n


def token_losses(model, batch: dict[str, torch.Tensor], model_type: str, unlikelihood: float = 0.0,
                 label_smoothing: float = 0.0, vocab_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Summed (weighted) cross-entropy over the scored tokens, the summed auxiliary terms (None
    when there are none) and the scored tokens' (weighted) count. The auxiliary terms, each with
    its weight: `unlikelihood` times `unlikelihood_sum`; `vocab_loss` times the copy head's
    vocabulary cross-entropy where its mixture applied (`vocab_sum`). With `label_smoothing` eps
    each target is 1 - eps on the gold token plus eps spread evenly over the vocabulary (Szegedy
    et al., 2016; PyTorch's cross_entropy(label_smoothing=))."""
    labels = batch["labels"]
    if model_type == "seq2seq":
        dec_in = getattr(model, "module", model).prepare_decoder_input_ids_from_labels(labels=labels)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=dec_in, use_cache=False)
        logits, target, w = out.logits, labels, batch.get("weights")
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits, target = out.logits[:, :-1], labels[:, 1:]
        w = batch["weights"][:, 1:] if batch.get("weights") is not None else None
    loss = _ce_sum(logits, target, w, label_smoothing)
    extra = []
    if unlikelihood:
        extra.append(unlikelihood * unlikelihood_sum(logits, target))
    if vocab_loss:
        extra.append(vocab_loss * vocab_sum(out, target, w, model_type))
    return loss, (sum(extra) if extra else None), scored_tokens(batch, model_type)


def _ce_sum(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None, label_smoothing: float = 0.0,
            where: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of the scored targets, each times its weight `w` (if any), only at
    the positions `where` (if given)."""
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target.reshape(-1),
                                ignore_index=IGNORE, reduction="none", label_smoothing=label_smoothing)
    keep = (target != IGNORE) if where is None else (target != IGNORE) & where
    scale = keep.float() if w is None else w * keep
    return (per_token * scale.reshape(-1)).sum()


def vocab_sum(out, target: torch.Tensor, w: torch.Tensor | None, model_type: str) -> torch.Tensor:
    """`--copy-vocab-loss`: the copy head's vocabulary distribution alone (`vocab_logits`, before
    the mixture with the pointer) scored by cross-entropy on the scored targets where the mixture
    applied (`copy_field`: the location field under `--copy-scope location`, every position
    otherwise), weighted as the main loss. Without a head, a model must write the location from
    its vocabulary, which makes it read the excerpt; with a head, the pointer takes that loss
    over. This keeps it (an auxiliary loss, as Merity et al.'s 2017 pointer sentinel model keeps
    the softmax a trained distribution of its own)."""
    vocab = getattr(out, "vocab_logits", None)
    if vocab is None:
        raise ValueError("--copy-vocab-loss needs a model with a copy head")
    field = getattr(out, "copy_field", None)
    if model_type == "causal":
        vocab = vocab[:, :-1]
        field = field[:, :-1] if field is not None else None
    return _ce_sum(vocab, target, w, where=field)


def unlikelihood_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Token-level unlikelihood (Welleck et al., 2020, "Neural text generation with unlikelihood
    training"), summed: at each scored position t, -log(1 - p_t(c)) for every candidate c, the
    distinct tokens of the answer's earlier scored positions other than the gold token at t. It
    pushes down a token the answer has already written, unless the gold repeats it, which is
    what greedy loops ("D0 D0 D0 ...") do. Only answer tokens are candidates, never the prompt's,
    so copying from the excerpt is not discouraged. Memory is batch x length^2, not x vocabulary."""
    scored = target != IGNORE
    tok = target.clamp(min=0)
    length = tok.size(1)
    same = tok.unsqueeze(2) == tok.unsqueeze(1)  # [b, t, s]: the tokens at t and s are equal
    earlier = torch.ones(length, length, dtype=torch.bool, device=tok.device).tril(-1)  # s < t
    repeat = (same & earlier & scored.unsqueeze(1)).any(-1)  # [b, s]: a scored s' < s holds the same token
    cand = earlier & ~same & (scored & ~repeat).unsqueeze(1) & scored.unsqueeze(2)
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, tok.unsqueeze(1).expand(-1, length, -1))
    return -(torch.log1p(-logp.exp().clamp(max=1 - 1e-5)) * cand).sum()


def scored_tokens(batch: dict[str, torch.Tensor], model_type: str) -> float:
    """How many label positions the loss scores (causal models predict from the second token on);
    with per-token weights, their summed weight, so a weighted loss stays a weighted mean."""
    labels = batch["labels"][:, 1:] if model_type == "causal" else batch["labels"]
    scored = labels != IGNORE
    weights = batch.get("weights")
    if weights is None:
        return int(scored.sum())
    w = weights[:, 1:] if model_type == "causal" else weights
    return float((w * scored).sum())


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        rest = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / rest)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw-scale":
        from .optim import AdamWScale

        return AdamWScale(groups, lr=cfg.learning_rate)
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, foreach=True)


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _share(batch: dict[str, torch.Tensor], ranks) -> tuple[dict[str, torch.Tensor], float]:
    """This rank's rows of a micro-batch and the factor its loss is scaled by: the world size (DDP
    averages the ranks' gradients; the sum is wanted), or 0 for a rank left without rows, which
    still runs its first row so that it takes part in the gradients' all-reduce."""
    start, stop = ranks.rows(batch["input_ids"].size(0))
    if start == stop:
        return {k: v[:1] for k, v in batch.items()}, 0.0
    return {k: v[start:stop] for k, v in batch.items()}, float(ranks.world)


@torch.no_grad()
def evaluate_loss(model, data: Sequence[Encoded], collate: Collator, model_type: str, cfg: TrainConfig,
                  device: str = "cpu") -> float | None:
    """Token-mean cross-entropy over `data` (micro-batches of similar length, cfg's batch size and
    precision); the model is left in the mode it was in. None without data."""
    if not data:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(data)), key=lambda i: data[i].size)
    for i in range(0, len(order), cfg.micro_batch_size):
        batch = _to(collate([data[j] for j in order[i:i + cfg.micro_batch_size]]), device)
        with autocast(cfg.precision, device):
            loss, n = token_loss_sum(model, batch, model_type)
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(1, count)


def train(model, train_data: Sequence[Encoded], cfg: TrainConfig, model_type: str, pad_id: int,
          val_data: Sequence[Encoded] = (), device: str = "cpu",
          on_step: Callable[[StepLog], None] | None = None,
          on_epoch: Callable[[int, float, float | None], None] | None = None,
          progress: bool = True, desc: str = "train",
          checkpoint: Callable[[dict, str], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          resume: TrainState | dict | None = None,
          select: Callable[[object, Callable[[], bool] | None], tuple[float, ...]] | None = None,
          keep_dir: str | Path | None = None) -> TrainResult:
    from . import distributed
    from .checkpoint import rng_state, set_rng_state
    from .device import heap_trimmer
    from .generate import GenerationStopped
    from .progress import bar as progress_bar

    if not train_data:
        raise ValueError("no training examples")
    if not cfg.averages_validly:
        raise ValueError(f"average_epochs is {cfg.average_epochs}: it averages 2 to {cfg.epochs} (the epochs) epochs")
    ranks = distributed.current()  # under torchrun: every micro-batch's rows shared among the ranks
    if ranks is not None and ranks.leader:
        distributed.send_job(distributed.Job(model, list(train_data), cfg, model_type, pad_id, device, resume))
    collate = Collator(model_type, pad_id)
    sampler = LengthGroupedBatches([e.size for e in train_data], cfg.micro_batch_size, cfg.seed, cfg.group_by_length)
    # The loader draws its workers' base seed from `generator` when an iterator is made: every
    # epoch without workers, once with persistent ones. Its own generator keeps those draws off
    # the global RNG (dropout's), so a resumed run's masks match an uninterrupted run's on every
    # platform; the batches' order is the sampler's, and collating uses no randomness.
    loader = torch.utils.data.DataLoader(
        list(train_data), batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_loader_worker_init if cfg.num_workers > 0 else None,
    )
    micro_per_epoch = len(sampler)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    model.to(device)
    model.train()
    net = model
    if ranks is not None:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, forward_sync_buffers=False)  # rank 0's weights and buffers copied once
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps), cfg.schedule))
    step = 0
    examples_seen = tokens_seen = 0
    all_losses: list[float] = []
    epoch_train: list[float] = []
    epoch_val: list[float | None] = []
    # Keeping the best epoch: `select(model, should_stop)` scores the model after every epoch; the weights
    # of the best score so far are kept (a later epoch wins a tie) and restored at the end.
    scores: list[tuple[float, ...]] = []
    best_epoch, best = None, KeptWeights(keep_dir)
    # Checkpoint averaging: the running mean of the weights at the ends of the last K epochs, scored
    # after the last one as one more candidate (a phase of its own: epoch == cfg.epochs in a state).
    average = WeightAverage(keep_dir) if cfg.average_epochs else None
    start_epoch, start_group, carried, elapsed = 0, 0, [], 0.0
    if resume is not None:
        resume = TrainState.from_dict(resume)
        if resume.total_steps != total_steps:
            raise ValueError(f"checkpoint was made for {resume.total_steps} steps, this training has {total_steps}")
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        step, examples_seen, tokens_seen = resume.step, resume.examples_seen, resume.tokens_seen
        all_losses, epoch_train, epoch_val = list(resume.all_losses), list(resume.epoch_train), list(resume.epoch_val)
        start_epoch, start_group = resume.epoch, resume.next_group
        carried, elapsed = list(resume.epoch_losses), resume.seconds
        scores = [tuple(x) for x in resume.epoch_scores]
        best_epoch = resume.best_epoch
        if best_epoch is not None:  # no weights in the state: the checkpoint's own are the best
            best.keep(resume.best_weights or model.state_dict())
        if average is not None and resume.average_count:
            average.restore(resume.average_weights, resume.average_count)
    trim = heap_trimmer()
    start = time.perf_counter() - elapsed
    bar = progress_bar(total_steps, desc, enabled=progress, initial=step, unit="steps")

    def state(epoch: int, next_group: int, batches: list, epoch_losses: list[float]) -> dict:
        # the checkpoint's own weights are the best epoch's, except in the averaging phase (the average's)
        current = best_epoch is not None and next_group == 0 and best_epoch == epoch < cfg.epochs
        return TrainState(
            step=step, epoch=epoch, next_group=next_group, total_steps=total_steps, batches=batches,
            epoch_losses=list(epoch_losses), all_losses=list(all_losses), epoch_train=list(epoch_train),
            epoch_val=list(epoch_val), examples_seen=examples_seen, tokens_seen=tokens_seen,
            seconds=time.perf_counter() - start, optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), rng=rng_state(), epoch_scores=[list(x) for x in scores],
            best_epoch=best_epoch, best_weights=None if current or best_epoch is None else best.weights(),
            average_weights=average.weights() if average is not None else None,
            average_count=average.count if average is not None else 0,
        ).as_dict()

    def interrupt(epoch: int, next_group: int, batches: list, epoch_losses: list[float]):
        bar.close()
        if checkpoint:
            checkpoint(state(epoch, next_group, batches, epoch_losses), "interrupt")
        raise TrainingInterrupted(step)

    end_stop = should_stop if ranks is None else None  # see the epoch's end below
    for epoch in range(start_epoch, cfg.epochs):
        first = start_group if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip=first * cfg.grad_accum)
        batches = sampler.batches()
        epoch_losses: list[float] = carried if epoch == start_epoch else []
        resuming = resume is not None and epoch == start_epoch
        if resuming and resume.batches != batches:
            raise ValueError("the data order differs from the checkpoint's (were the examples changed?)")
        if resuming:  # the RNG state where the checkpoint took it (the loader draws nothing from it)
            set_rng_state(resume.rng)
        # The epoch's micro-batches in the sampler's order from the first untrained one, collated by
        # the loader's workers while the steps run (a couple of batches ahead).
        feed = iter(loader)
        for g in range(first, steps_per_epoch):
            group = list(itertools.islice(feed, cfg.grad_accum))  # an epoch's last group may be partial
            n_tokens = max(1, sum(scored_tokens(b, model_type) for b in group))
            loss_total = 0.0
            try:
                for i, b in enumerate(group):
                    examples_seen += b["input_ids"].size(0)
                    tokens_seen += int(b["attention_mask"].sum())
                    scale = 1.0
                    if ranks is not None:
                        b, scale = _share(b, ranks)
                    b = _to(b, device)
                    # DDP sums the ranks' gradients once per optimizer step, at the group's last backward
                    sync = ranks is None or i == len(group) - 1
                    with contextlib.nullcontext() if sync else net.no_sync():
                        with autocast(cfg.precision, device):
                            loss_sum, extra, _ = token_losses(net, b, model_type, cfg.unlikelihood,
                                                                 cfg.label_smoothing, cfg.copy_vocab_loss)
                        objective = loss_sum if extra is None else loss_sum + extra
                        (objective / n_tokens if scale == 1.0 else objective * (scale / n_tokens)).backward()
                    loss_total += float(loss_sum.detach()) * (scale > 0)
                stop_now = bool(should_stop and should_stop())
                if ranks is not None:  # the step's loss over every rank, and whether rank 0 was asked to stop
                    shared = torch.tensor([loss_total, float(stop_now)], dtype=torch.float64)
                    torch.distributed.all_reduce(shared)
                    loss_total, stop_now = float(shared[0]), bool(shared[1])
            except RuntimeError as exc:  # torch.distributed's errors included
                if ranks is None or not _collective_failure(exc):
                    raise
                bar.close()
                raise distributed.RankLost(step, exc) from None
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if trim is not None:
                trim(step)
            loss = loss_total / n_tokens
            all_losses.append(loss)
            epoch_losses.append(loss)
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{loss:.4f}", epoch=f"{epoch + (g + 1) / steps_per_epoch:.2f}",
                            refresh=False)
            bar.update(1)
            if on_step:
                on_step(StepLog(step, epoch + (g + 1) / steps_per_epoch, loss, lr,
                                sum(int(b["attention_mask"].sum()) for b in group)))
            if stop_now and (g + 1 < steps_per_epoch or epoch + 1 < cfg.epochs):
                interrupt(epoch, g + 1, batches, epoch_losses)
        # The epoch's end (validation loss, the development slice's generation) takes minutes on a
        # CPU: a stop asked for before or during it is obeyed within one generation batch, from a
        # checkpoint at the epoch's last step, and a resume does the epoch's end again. One process
        # only: under torchrun the ranks agree on stopping at optimizer steps alone.
        if end_stop is not None and end_stop():  # from the state after the epoch's last step
            interrupt(epoch, steps_per_epoch, batches, epoch_losses)
        val = evaluate_loss(model, val_data, collate, model_type, cfg, device)
        tr = sum(epoch_losses) / len(epoch_losses)
        score = None
        if select is not None:
            try:
                score = tuple(select(model, end_stop))
            except GenerationStopped:
                interrupt(epoch, steps_per_epoch, batches, epoch_losses)
            model.train()
        epoch_train.append(tr)  # only now: an interrupt above leaves the epoch's end to the resume
        epoch_val.append(val)
        if score is not None:
            scores.append(score)
            if best_epoch is None or score >= scores[best_epoch - 1]:
                best_epoch = epoch + 1
                best.keep(model.state_dict())
        if average is not None and epoch >= cfg.epochs - cfg.average_epochs:
            average.add(model.state_dict())
        if trim is not None:  # what the epoch's validation and generation freed, whatever the step
            trim()
        if on_epoch:
            on_epoch(epoch + 1, tr, val, score)
        if checkpoint and epoch + 1 < cfg.epochs:
            checkpoint(state(epoch + 1, 0, sampler.batches_for(epoch + 1), []), "epoch")
    bar.close()
    average_score = average_val = None
    kept_average = False
    if average is not None:
        # The average of the last epochs is one more candidate, scored like an epoch (Vaswani et al.,
        # 2017, averaged the last checkpoints; Izmailov et al., 2018, weights along the trajectory):
        # kept where it scores at least as well as the best epoch, or always without `select`. A stop
        # asked for meanwhile checkpoints this phase (the model holding the average) to be done again.
        model.load_state_dict(average.weights())
        if end_stop is not None and end_stop():
            interrupt(cfg.epochs, 0, [], [])
        average_val = evaluate_loss(model, val_data, collate, model_type, cfg, device)
        if select is not None:
            try:
                average_score = tuple(select(model, end_stop))
            except GenerationStopped:
                interrupt(cfg.epochs, 0, [], [])
        model.train()
        kept_average = average_score is None or best_epoch is None or average_score >= scores[best_epoch - 1]
        if not kept_average:
            model.load_state_dict(best.weights())
        average.clear()
    elif best_epoch is not None and best_epoch != cfg.epochs:
        model.load_state_dict(best.weights())
    best.clear()
    return TrainResult(
        steps=step, final_loss=epoch_train[-1], mean_loss=sum(all_losses) / len(all_losses),
        seconds=time.perf_counter() - start, examples_seen=examples_seen, tokens_seen=tokens_seen,
        effective_batch_size=cfg.effective_batch_size, epoch_val_losses=epoch_val, epoch_train_losses=epoch_train,
        epoch_scores=scores, chosen_epoch=best_epoch, average_score=average_score, average_val_loss=average_val,
        kept_average=kept_average,
    )


def _loader_worker_init(_worker_id: int) -> None:
    """A data-loading worker ignores SIGINT and SIGTERM: a signal sent to the whole process group
    (Ctrl-C in a terminal, a batch scheduler's SIGTERM to a job) reaches the workers too, and one
    that died of it made the training loop fail instead of stopping at a checkpoint. The main
    process stops, and shuts its workers down; they exit on their own if it dies."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _collective_failure(exc: BaseException) -> bool:
    """Whether an error came from a collective with a rank that is gone (gloo's words for it)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("gloo", "connection closed", "connection reset", "broken pipe", "timed out"))


class KeptWeights:
    """The weights of the best epoch so far, independent of further training: a copy in memory, or,
    given a folder, a file there (`kept.pt`, written atomically), read back memory-mapped when
    needed. A file keeps one copy of the model out of memory for the rest of the training: 0.18 GB
    for either scratch model (46 M parameters with the 4000-piece vocabulary; a training's peak
    measured 0.20 GB lower, `benchmarks/kept_memory.py`)."""

    def __init__(self, folder: str | Path | None = None, name: str = "kept.pt"):
        self.folder = Path(folder) if folder is not None else None
        self.name = name  # the file's name in `folder`
        self._weights: dict[str, torch.Tensor] | None = None
        self._saved = False

    def keep(self, weights: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._weights = {k: v.detach().clone() for k, v in weights.items()}
            return
        from .checkpoint import atomic_torch_save

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({k: v.detach() for k, v in weights.items()}, self.folder / self.name)
        self._saved = True

    def weights(self) -> dict[str, torch.Tensor] | None:
        if self.folder is None or not self._saved:
            return self._weights
        return torch.load(self.folder / self.name, map_location="cpu", weights_only=True, mmap=True)

    def clear(self) -> None:
        self._weights = None
        if self.folder is not None and self._saved:
            (self.folder / self.name).unlink(missing_ok=True)
            self._saved = False


class WeightAverage:
    """The running mean of weights added one epoch at a time (in fp32; other tensors, such as
    integer buffers, are the latest), kept like `KeptWeights`: in memory, or in `average.pt` of a
    folder, so a training holds at most one more copy of the model while it adds one."""

    def __init__(self, folder: str | Path | None = None):
        self._kept = KeptWeights(folder, "average.pt")
        self.count = 0

    def add(self, weights: dict[str, torch.Tensor]) -> None:
        mean = self._kept.weights()
        n = self.count + 1
        new = {}
        for k, v in weights.items():
            v = v.detach()
            if not v.is_floating_point():
                new[k] = v.clone()
            elif mean is None:
                new[k] = v.float().clone()
            else:
                new[k] = mean[k] + (v.float() - mean[k]) / n
        self._kept.keep(new)
        self.count = n

    def restore(self, weights: dict[str, torch.Tensor], count: int) -> None:
        self._kept.keep(weights)
        self.count = count

    def weights(self) -> dict[str, torch.Tensor] | None:
        return self._kept.weights()

    def clear(self) -> None:
        self._kept.clear()
        self.count = 0
