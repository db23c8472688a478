"""Orchestration: connects data, models, the training loop, generation and the store.

Never holds a database session open during training or generation: the run is
written as `running`, each stage's rows go in a short transaction of their own.
"""
from __future__ import annotations

import gc
import json
import math
import platform as _platform
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from . import __version__
from .agreement import agreement
from .checkpoint import file_sha256
from .console import banner
from .config import DEFAULT_EXAMPLES, DEFAULT_NO_REPEAT, ConfigError, GenerateConfig, ModelSpec, TrainConfig, defaults_for, resolve_models
from .data import Example, fold_split, instruction_form, load_jsonl, split, subsample, training_share
from .device import PeakMemory, loader_processes
from .interrupt import RunInterrupted
from .parse import canonical_label, location_in_excerpt, parse_output
from .progress import above_bar
from .prompts import causal_answer, seq2seq_prompt
from .rouge import rouge_f1
from .store import AgreementRow, BaselineRow, Lease, ModelInfo, PredictionRow, RunInfo, Store, StudyInfo, lease_held, now

Echo = Callable[[str], None]

# Tiny versions of the architectures (2 layers, width 64) for tests and smoke runs.
TINY = {
    "seq2seq": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
    "causal": dict(n_layer=2, n_embd=64, n_head=4, n_positions=1024),
}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def free_memory() -> None:
    """Release a model's memory before the next one: garbage, the CUDA cache, and the
    pages glibc keeps after large frees (without malloc_trim the next model's peak
    stacks on the previous model's leftovers in the resident set)."""
    import torch

    from .device import glibc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"wmg": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": _platform.python_version()}


@dataclass
class TrainOptions:
    data: str
    models: str
    examples: int | None | str = "auto"  # a number, None for every line, or auto (see DEFAULT_EXAMPLES)
    eval_split: float = 0.1
    seed: int = 42
    init: str = "auto"
    device: str = "cpu"
    platform: str = "unix"
    workers: int = 0
    precision: str = "fp32"
    checkpoints: str = "checkpoints"
    tiny: bool = False
    scratch_vocab: int | None = None
    overrides: dict = field(default_factory=dict)  # hyperparameters given on the command line
    sources: dict = field(default_factory=dict)  # model name -> local folder of pretrained weights
    progress: bool = True
    folds: int | None = None  # with `fold`: hold out fold `fold` (1 to K) of a stratified K-fold partition
    fold: int | None = None
    train_fraction: float = 1.0  # learning curves: keep this stratified share of the training split
    # More training lines from other files, added after the split and never evaluated (the data lever
    # measured on fixed folds); numbered after the data file's lines, their SHA-256 kept to refuse
    # a changed file (a resumed run reads its examples from the store and does not need them).
    extra_train: list = field(default_factory=list)
    extra_train_sha256: list = field(default_factory=list)
    # Each model's hyperparameters, resolved once when the run (or study) is recorded: model name ->
    # {"init": the init they were resolved for, "hyperparams": TrainConfig fields}. A resumed run,
    # and every fold of a study, builds from these, never from the defaults of the wmg that happens
    # to run it (they may have changed since). None: resolve from this wmg's defaults.
    model_configs: dict | None = None
    # The comparison options the run was started with (`wmg train`: COMPARE_OPTIONS' keys), so a
    # resumed run compares as its start asked. None for a study's runs (the study keeps them) and
    # for runs recorded before this was kept.
    compare: dict | None = None


# `wmg train`'s comparison options, as a run's config keeps them (the keys a study's "compare" uses)
COMPARE_OPTIONS = {"compare": "compare", "baseline": "baseline", "max_new_tokens": "max_new_tokens",
                   "no_repeat": "no_repeat_ngram_size", "location_span": "location_span", "report": "report"}


def prepare_data(opts: TrainOptions, echo: Echo) -> tuple[list[Example], list[Example]]:
    banner(echo, "LOADING AND PREPARING DATA")
    examples = load_jsonl(opts.data)
    echo(f"✓ Found {opts.data}")
    echo(f"✓ Loaded {len(examples)} examples")
    chosen = subsample(examples, opts.examples, opts.seed)
    if len(chosen) < len(examples):
        echo(f"✓ Subsampled to {len(chosen)} examples (seed {opts.seed})")
    else:
        echo(f"✓ Using all {len(chosen)} examples")
    if opts.folds:
        train, val = fold_split(chosen, opts.folds, opts.fold, opts.seed)
        echo(f"✓ Fold {opts.fold} of {opts.folds} (stratified by label and instruction form, seed {opts.seed}) "
             "held out")
    else:
        train, val = split(chosen, opts.eval_split, opts.seed)
    if opts.train_fraction < 1:
        whole = len(train)
        train = training_share(train, opts.train_fraction, opts.seed)
        echo(f"✓ Training share {opts.train_fraction:g}: {len(train)} of the {whole} training examples "
             "(stratified by label and instruction form; the held-out examples are unchanged)")
    if opts.extra_train:
        train = train + extra_training_lines(opts, examples, echo)
    echo(f"✓ Train: {len(train)} | Validation: {len(val)}")
    return train, val


def hash_extra_training(opts: TrainOptions) -> None:
    """Record the SHA-256 of each `--extra-train` file (once, when a run or study is set up)."""
    opts.extra_train = [str(p) for p in opts.extra_train]
    opts.extra_train_sha256 = [file_sha256(p) for p in opts.extra_train]


def extra_training_lines(opts: TrainOptions, data: list[Example], echo: Echo) -> list[Example]:
    """The lines of the `--extra-train` files, numbered after the data file's (as if appended to
    it). Refused: a file changed since its hash was recorded, and a line whose excerpt is also in
    the data file (it could be evaluated, or train twice)."""
    seen = {e.input.strip() for e in data}
    out: list[Example] = []
    offset = len(data)
    hashes = opts.extra_train_sha256 or [None] * len(opts.extra_train)
    for path, recorded in zip(opts.extra_train, hashes):
        lines = load_jsonl(path)
        if recorded is not None and file_sha256(path) != recorded:
            raise ConfigError(f"{path} has changed since this run's options were recorded (its SHA-256 differs)")
        for e in lines:
            if e.input.strip() in seen:
                raise ConfigError(f"{path}:{e.index + 1}: its excerpt is already in {opts.data} or an earlier "
                                  "--extra-train file; extra training lines must be new")
            seen.add(e.input.strip())
            out.append(replace(e, index=offset + e.index))
        offset += len(lines)
        echo(f"✓ Extra training lines: {len(lines)} from {path} (added to the training split, never evaluated)")
    return out


def hyperparams(spec: ModelSpec, init: str, opts: TrainOptions) -> TrainConfig:
    """The model's hyperparameters for `init`: those recorded in `opts.model_configs` if any (a
    model built from another init than they were recorded for is refused), else this wmg's
    defaults with the command line's overrides; the run's seed, workers and precision on top."""
    recorded = (opts.model_configs or {}).get(spec.name)
    if recorded is None:
        cfg = defaults_for(spec, init).with_(**opts.overrides)
        if cfg.copy_head == "off":  # a default head turned off takes its default settings with it
            cfg = cfg.with_(**{k: v for k, v in (("copy_scope", "everywhere"), ("copy_vocab_loss", 0.0))
                               if k not in opts.overrides})
    else:
        if recorded.get("init") not in (None, init):
            raise ConfigError(f"{spec.name}: its hyperparameters were recorded for {recorded['init']} init, but "
                              f"this machine gives it {init} init; make it where the init is the same")
        cfg = TrainConfig.recorded(spec.name, recorded["hyperparams"])
    return cfg.with_(seed=opts.seed, num_workers=opts.workers, precision=opts.precision)


def record_model_configs(specs: list[ModelSpec], inits: dict[str, str], opts: TrainOptions) -> dict:
    """Resolve every model's hyperparameters now, for recording with the run or study."""
    configs = {s.name: hyperparams(s, inits[s.name], opts) for s in specs}
    for name, cfg in configs.items():
        if cfg.copy_scope != "everywhere" and cfg.copy_head == "off":
            raise ConfigError(f"{name}: --copy-scope {cfg.copy_scope} needs a copy head (--copy-head pointer|span)")
        if cfg.copy_vocab_loss and cfg.copy_head == "off":
            raise ConfigError(f"{name}: --copy-vocab-loss needs a copy head (--copy-head pointer|span)")
        if not cfg.averages_validly:
            raise ConfigError(f"{name}: --average-epochs {cfg.average_epochs} must be between 2 and the "
                              f"epochs ({cfg.epochs}), or 0")
        if cfg.prompt_loss_weight != 1.0 and cfg.causal_loss != "full":
            raise ConfigError(f"{name}: --prompt-loss-weight needs the prompt in the loss (--causal-loss full)")
    return {name: {"init": inits[name], "hyperparams": cfg.to_dict()} for name, cfg in configs.items()}


def scratch_overrides(spec: ModelSpec, opts: TrainOptions) -> dict | None:
    """Architecture changes of a scratch build: the tiny test sizes, T5's tied output layer, the
    copy head."""
    over = dict(TINY[spec.type]) if opts.tiny else {}
    if (opts.model_configs or {}).get(spec.name, {}).get("init") == "pretrained":
        return over or None  # recorded for pretrained weights, which keep their architecture
    cfg = hyperparams(spec, "scratch", opts)
    if spec.type == "seq2seq" and cfg.tie_embeddings:
        over["tie_word_embeddings"] = True
    if cfg.copy_head != "off":
        over["copy_head"] = cfg.copy_head
        if cfg.copy_scope != "everywhere":
            over["copy_scope"] = cfg.copy_scope
    return over or None


def encode_all(spec: ModelSpec, tokenizer, examples, cfg: TrainConfig):
    from .batching import encode_causal, encode_seq2seq

    if spec.type == "seq2seq":
        return [encode_seq2seq(tokenizer, seq2seq_prompt(e.instruction, e.input), e.output,
                               cfg.max_input_length, cfg.max_target_length, cfg.type_loss_weight,
                               cfg.location_loss_weight) for e in examples]
    return [encode_causal(tokenizer, seq2seq_prompt(e.instruction, e.input), causal_answer(e.output),
                          cfg.max_causal_length, cfg.max_target_length, cfg.causal_loss, cfg.type_loss_weight,
                          cfg.location_loss_weight, cfg.prompt_loss_weight)
            for e in examples]


def tokenizer_corpus(examples) -> list[str]:
    return [seq2seq_prompt(e.instruction, e.input) + causal_answer(e.output) for e in examples]


def _checkpoint_root(base: str, run_id: int) -> Path:
    root = Path(base) / f"run-{run_id}"
    n = 1
    while root.exists() and any(root.iterdir()):  # another results store may have used this id
        n += 1
        root = Path(base) / f"run-{run_id}-{n}"
    return root


def train_model(store: Store, run_id: int, model_info: ModelInfo | None, run_model_id: int, spec: ModelSpec,
                opts: TrainOptions, train: list[Example], val: list[Example], ckpt_root: Path, echo: Echo,
                stop: Callable[[], bool] | None = None) -> None:
    """Train one model, checkpointing every epoch and on `stop()`. With `model_info` (a
    resumed run) it continues from the model's last checkpoint, if it has one."""
    from .checkpoint import ResumeDir, load_model_folder, save_model_folder
    from .models import build, count_parameters, fuse_gelu, set_dropout
    from .recipe import cue_quotes, dev_slice, open_copies
    from .train import TrainState, train as train_loop

    banner(echo, f"TRAINING MODEL: {spec.name.upper()}")
    memory = PeakMemory()  # this model's own peak, not the previous one's
    echo(f"  Model: {spec.hub_id}")
    echo(f"  Type: {spec.type}{' (causal LM)' if spec.type == 'causal' else ''}: {spec.architecture}")
    resume_dir = ResumeDir(ckpt_root / spec.name / "resume")
    folder = resume_dir.latest() if model_info is not None else None
    state = None
    if folder is not None:  # verified by resume_run
        state = TrainState.from_dict(resume_dir.load_state(folder))
        model, tok = load_model_folder(folder, spec.type)
        cfg = TrainConfig.recorded(spec.name, model_info.hyperparams)
        init, note = model_info.init, model_info.init_note
        store.truncate_training(run_model_id, state.step, len(state.epoch_train))
        echo(f"✓ Resuming from {folder}: step {state.step} of {state.total_steps} "
             + (f"(epoch {state.epoch + 1}, {state.next_group} steps into it)" if state.epoch < cfg.epochs
                else "(every epoch done; the average of the last epochs to be scored)") + f" [init={init}]")
    else:
        if model_info is not None:  # resumed run, but this model never reached a checkpoint
            store.truncate_training(run_model_id, 0, 0)
        seed_everything(opts.seed)
        built = build(spec, "scratch" if opts.tiny else opts.init, tokenizer_corpus(train),
                      source=opts.sources.get(spec.name), vocab_size=opts.scratch_vocab,
                      overrides=scratch_overrides(spec, opts), echo=echo)
        cfg = hyperparams(spec, built.init, opts)
        for flag, on in (("--tie-embeddings", cfg.tie_embeddings), ("--copy-head", cfg.copy_head != "off")):
            if on and built.init != "scratch":
                raise ConfigError(f"{spec.name}: {flag} changes the architecture, so it applies to scratch "
                                  "init only; pretrained weights keep their published architecture")
        model, tok, init, note = built.model, built.tokenizer, built.init, built.note
        del built
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    fuse_gelu(model)
    n_params = count_parameters(model)
    echo(f"✓ Model {'loaded' if init == 'pretrained' else 'built'}: {type(model).__name__} "
         f"[init={init}{', tiny' if opts.tiny else ''}] ({note})")
    published = {"pretrained": "", "scratch": f" (the published {spec.name} has {spec.params} with its own "
                 "vocabulary; this one has a tokenizer trained on the training split)"}
    echo(f"  Parameters: {n_params:,} | vocabulary: {len(tok):,}"
         + (" (tiny test architecture)" if opts.tiny else published.get(init, "")))
    store.model_built(run_model_id, init=init, note=note, parameters=n_params, vocab_size=len(tok),
                     hyperparams=cfg.to_dict())
    echo("  Tokenizing datasets...")
    fit, dev = dev_slice(train, cfg.dev_fraction, cfg.seed)
    if dev:
        echo(f"  Development slice: {len(dev)} of the {len(train)} training examples held out; the epoch "
             "with the best gold-type accuracy on them (open instruction, plain greedy) is kept")
    quotes = cue_quotes(fit, cfg.quote_mix, cfg.seed, cfg.quote_shuffle) if cfg.quote_mix else []
    if quotes:
        echo(f"  Quoting examples: {len(quotes)} ({cfg.quote_mix} per training excerpt"
             f"{', its words shuffled' if cfg.quote_shuffle else ''}: a run of its words asked "
             "for by its first and last two, answered as the location) mixed into fine-tuning")
    if cfg.open_copies:
        n_before = len(fit)
        fit = open_copies(fit)
        echo(f"  Open-form copies: {len(fit) - n_before} examples whose instruction names the label are also "
             f"trained with the open instruction ({len(fit)} in all)")
    train_enc = encode_all(spec, tok, fit + quotes, cfg)
    val_enc = encode_all(spec, tok, val, cfg)
    if cfg.tapt_epochs and state is None:
        tapt(model, tok, spec, cfg, fit, opts, echo)
    steps_per_epoch = math.ceil(math.ceil(len(train_enc) / cfg.micro_batch_size) / cfg.grad_accum)
    echo(f"  Training: {cfg.epochs} epochs x {steps_per_epoch} steps, micro-batch {cfg.micro_batch_size} x "
         f"accumulation {cfg.grad_accum} = effective batch {cfg.effective_batch_size}, lr {cfg.learning_rate:g} "
         f"({cfg.schedule}, warmup {cfg.warmup_ratio:g}), precision {cfg.precision}")
    pending = []
    say = above_bar(echo, opts.progress)

    def on_step(st):
        pending.append(st)  # every step is stored at the end of its epoch (or at an interrupt)
        if cfg.log_every and st.step % cfg.log_every == 0:
            say(f"{spec.name}: step={st.step} epoch={st.epoch:.2f} loss={st.loss:.4f} learning_rate={st.lr:.3g}")

    def on_epoch(epoch, train_loss, val_loss, dev):
        store.record_epoch(run_model_id, list(pending), epoch, train_loss, val_loss, dev)
        pending.clear()
        vl = f"{val_loss:.4f}" if val_loss is not None else "n/a"
        dv = f" dev_accuracy={dev[0]:.1%} dev_format={dev[1]:.1%}" if dev else ""
        say(f"{spec.name}: epoch={epoch} train_loss={train_loss:.4f} eval_loss={vl}{dv}")

    def on_checkpoint(st, reason):
        # The store first, then the checkpoint: a crash in between leaves rows past the
        # checkpoint, which a resume removes; the other order would lose rows.
        if pending:
            store.record_steps(run_model_id, list(pending))
            pending.clear()
        t0 = time.perf_counter()
        path = resume_dir.save(model, tok, st)
        say(f"  ✓ Checkpoint ({reason}, step {st['step']}): {path} ({time.perf_counter() - t0:.1f} s)")

    result = train_loop(model, train_enc, cfg, spec.type, tok.pad_token_id, val_enc, device=opts.device,
                        on_step=on_step, on_epoch=on_epoch, progress=opts.progress, desc=spec.name,
                        checkpoint=on_checkpoint, should_stop=stop, resume=state,
                        select=dev_selector(tok, spec, cfg, dev, opts.device) if dev else None,
                        keep_dir=ckpt_root / spec.name)
    out = save_model_folder(ckpt_root / spec.name / "final_model", model, tok)
    chosen = result.chosen_epoch or cfg.epochs
    peak = memory.mb()
    averaged = bool(cfg.average_epochs)
    store.model_finished(run_model_id, steps=result.steps, final_loss=result.final_loss,
                        mean_loss=result.mean_loss,
                        final_val_loss=result.average_val_loss if result.kept_average else result.epoch_val_losses[chosen - 1],
                        seconds=result.seconds, tokens_seen=result.tokens_seen, checkpoint_path=str(out),
                        chosen_epoch=chosen, peak_rss_mb=peak, kept_average=result.kept_average if averaged else None,
                        average_dev=result.average_score)
    window = f"average of epochs {cfg.epochs - cfg.average_epochs + 1} to {cfg.epochs}"
    if averaged and result.average_score is not None:
        a = result.average_score
        echo(f"  The {window}: dev_accuracy={a[0]:.1%} dev_format={a[1]:.1%}")
    if result.kept_average:
        echo(f"✓ Kept the {window}" + (f" (at least as good as the best epoch, {chosen}, on the development slice)"
                                    if result.chosen_epoch is not None else ""))
    elif result.chosen_epoch is not None:
        echo(f"✓ Kept epoch {chosen} of {cfg.epochs} (best on the development slice)")
    resume_dir.clear()  # the final model is saved and recorded; the resume state is no longer needed
    echo(f"✓ Training complete! Loss: {result.final_loss:.4f} (last epoch; mean over training "
         f"{result.mean_loss:.4f}) in {result.seconds:.0f} s, {result.steps} steps"
         + (f", peak resident memory {peak:,.0f} MB" if peak is not None else ""))
    echo(f"✓ Saved to: {out}")
    echo(f"  Cleaning up memory after {spec.name}...")
    del model
    free_memory()
    echo("  ✓ Memory freed")


def dev_selector(tok, spec: ModelSpec, cfg: TrainConfig, dev: list[Example], device: str):
    """Scores a model on the development slice: the open instruction, plain greedy decoding."""
    from .generate import generate
    from .recipe import OPEN_INSTRUCTION, dev_score

    prompts = [seq2seq_prompt(OPEN_INSTRUCTION, e.input) for e in dev]
    gcfg = GenerateConfig(max_new_tokens=cfg.max_target_length, batch_size=16, precision=cfg.precision)
    limit = cfg.max_input_length if spec.type == "seq2seq" else cfg.max_causal_length - cfg.max_target_length

    def select(model, should_stop=None) -> tuple[float, float]:
        outs = generate(model, tok, prompts, spec.type, gcfg, max(16, limit), device=device, should_stop=should_stop)
        return dev_score([o.text for o in outs], dev)

    return select


def tapt(model, tok, spec: ModelSpec, cfg: TrainConfig, fit: list[Example], opts: TrainOptions, echo: Echo) -> None:
    """Task-adaptive pretraining on the excerpts of the examples being fitted (never the evaluated ones)."""
    from .recipe import tapt_examples
    from .train import train as train_loop

    texts = sorted({e.input for e in fit})
    length = cfg.max_input_length if spec.type == "seq2seq" else cfg.max_causal_length
    data = tapt_examples(tok, texts, spec.type, cfg.tapt_epochs, cfg.seed, length, cfg.tapt_denoise, cfg.tapt_quotes)
    objectives = ([("span corruption (15%, mean span 3)" if spec.type == "seq2seq" else "causal language modelling")]
                  if cfg.tapt_denoise else []) + ([f"{cfg.tapt_quotes} quote(s) of random spans"] if cfg.tapt_quotes else [])
    echo(f"  Task-adaptive pretraining on {len(texts)} training excerpts, {cfg.tapt_epochs} epochs: "
         f"{' + '.join(objectives)} per excerpt and epoch ({len(data)} examples)")
    # Every epoch's examples are drawn afresh (new masks, new quotes), so the copies are one pass.
    tcfg = cfg.with_(epochs=1)
    losses: list[float] = []
    result = train_loop(model, data, tcfg, spec.type, tok.pad_token_id, device=opts.device,
                        on_step=lambda st: losses.append(st.loss), progress=opts.progress, desc=f"{spec.name} pretrain")
    k = max(1, len(losses) // 10)
    echo(f"  ✓ Pretraining loss {sum(losses[:k]) / k:.4f} (first tenth) -> {sum(losses[-k:]) / k:.4f} (last tenth), "
         f"{result.steps} steps, {result.seconds:.0f} s")


def expected_inits(specs: list[ModelSpec], opts: TrainOptions) -> dict[str, str]:
    """The init each model will get, known before the data is split (auto asks whether weights are reachable)."""
    from .models import pretrained_available

    if opts.tiny or opts.init == "scratch":
        return {s.name: "scratch" for s in specs}
    if opts.init == "pretrained":
        return {s.name: "pretrained" for s in specs}
    return {s.name: "pretrained" if pretrained_available(s, opts.sources.get(s.name)) else "scratch" for s in specs}


def train_run(store: Store, opts: TrainOptions, echo: Echo = print, study_id: int | None = None,
              lease: Lease | None = None) -> int:
    """Train every model of a new run; returns the run id. The run is marked failed or
    interrupted if anything stops it."""
    from .interrupt import process_identity

    specs = resolve_models(opts.models)
    inits = expected_inits(specs, opts)
    if opts.examples == "auto":
        pretrained = all(v == "pretrained" for v in inits.values())
        opts.examples = DEFAULT_EXAMPLES["pretrained" if pretrained else "scratch"]
        echo(f"✓ Examples: {'100 (the tutorial default for fine-tuning)' if pretrained else 'all (scratch init needs every example)'}; "
             "set --examples to change")
    if opts.model_configs is None:
        opts.model_configs = record_model_configs(specs, inits, opts)
    configs = [(spec, hyperparams(spec, inits[spec.name], opts).to_dict()) for spec in specs]
    train, val = prepare_data(opts, echo)
    run_config = {k: v for k, v in vars(opts).items() if k not in ("progress",)}
    run_id, model_ids = store.create_run(
        data_path=str(opts.data), data_sha256=file_sha256(opts.data), examples_requested=opts.examples,
        eval_split=len(val) / (len(train) + len(val)) if opts.folds else opts.eval_split, seed=opts.seed,
        init_requested=opts.init, device=opts.device, platform=opts.platform, config=run_config, versions=versions(),
        models=configs, train=train, validation=val, owner=process_identity(), study_id=study_id, fold=opts.fold, lease=lease)
    echo(f"✓ Run {run_id} recorded in the results store")
    ckpt_root = _checkpoint_root(opts.checkpoints, run_id).resolve()  # a resume may start elsewhere
    store.set_checkpoint_dir(run_id, str(ckpt_root))
    _train_models(store, run_id, specs, {s.name: None for s in specs}, model_ids, opts, train, val, ckpt_root, 0.0, echo)
    return run_id


def _train_models(store: Store, run_id: int, specs: list[ModelSpec], infos: dict, model_ids: dict[str, int],
                  opts: TrainOptions, train: list[Example], val: list[Example], ckpt_root: Path,
                  prior_seconds: float, echo: Echo) -> None:
    """Train the models of a run in order under a graceful stop; mark the run with how it ended."""
    from .distributed import RankLost
    from .interrupt import GracefulStop, Terminated
    from .train import TrainingInterrupted

    start = time.perf_counter()
    stop = GracefulStop(above_bar(echo, opts.progress))
    elapsed = lambda: prior_seconds + time.perf_counter() - start  # noqa: E731
    # The signals stay caught until the run's end is stored: a SIGTERM arriving while the run is
    # marked (torchrun's agent sends one to rank 0 as soon as another rank dies) must not cut that
    # write short and leave the run `running`.
    with stop:
        try:
            for spec in specs:
                info = infos.get(spec.name)
                if info is not None and info.status == "completed":
                    echo(f"✓ {spec.name}: already trained in this run ({info.checkpoint_path})")
                    continue
                train_model(store, run_id, info, model_ids[spec.name], spec, opts, train, val, ckpt_root, echo, stop)
        except TrainingInterrupted as exc:
            msg = f"stopped by {stop.requested} after step {exc.step}; resume with `wmg train --resume {run_id}`"
            store.finish_run(run_id, "interrupted", msg, elapsed())
            raise RunInterrupted(f"run {run_id} {msg}", stop.requested) from None
        except RankLost as exc:
            msg = f"{exc}; resume with `wmg train --resume {run_id}` (under torchrun or not)"
            store.finish_run(run_id, "interrupted", msg, elapsed())
            raise RunInterrupted(f"run {run_id} {msg}", stop.requested) from None
        except KeyboardInterrupt:
            msg = f"stopped at once by a second signal; resume from the last epoch with `wmg train --resume {run_id}`"
            store.finish_run(run_id, "interrupted", msg, elapsed())
            raise RunInterrupted(f"run {run_id} {msg}", stop.requested or "SIGINT") from None
        except BaseException as exc:
            store.finish_run(run_id, "failed", f"{type(exc).__name__}: {exc}", elapsed())
            raise
        store.finish_run(run_id, "completed", None, elapsed())
    if stop.requested:  # a signal after the last step: the run is complete, the command stops here
        raise Terminated if stop.requested == "SIGTERM" else KeyboardInterrupt


def resume_run(store: Store, run_id: int, echo: Echo = print, progress: bool = True) -> RunInfo:
    """Continue an interrupted (or failed) run from its last checkpoints, with the options,
    split and hyperparameters it was started with."""
    from .checkpoint import ResumeDir
    from .interrupt import process_alive, process_identity

    store.reap_dead_runs(process_alive)
    run = store.get_run(run_id)
    if run.status == "completed":
        raise ConfigError(f"run {run_id} is completed; there is nothing to resume")
    if run.status == "running":
        raise ConfigError(f"run {run_id} is still running (pid {run.pid} on {run.host}); stop it before resuming")
    if not run.checkpoint_dir:
        raise ConfigError(f"run {run_id} was made by a wmg without resumable checkpoints; start a new run")
    opts = options_from_config(run.config)
    opts.progress = progress
    if opts.model_configs is None:  # a run recorded before the config kept them: its models' rows have them
        opts.model_configs = {m.name: {"init": m.init, "hyperparams": m.hyperparams} for m in run.models}
    specs = resolve_models(opts.models)
    banner(echo, f"RESUMING RUN {run_id}")
    echo(f"✓ Run {run_id} was {run.status}: {run.error or 'no reason recorded'}")

    def examples(split_name: str) -> list[Example]:
        return [Example(x.source_line, x.instruction, x.input, x.gold_output)
                for x in store.run_examples(run_id, split_name)]

    train, val = examples("train"), examples("validation")
    echo(f"✓ Train: {len(train)} | Validation: {len(val)} (the run's own split, from the results store)")
    for m in run.models:  # every checkpoint checked before the run is touched
        if m.status != "completed":
            rd = ResumeDir(Path(run.checkpoint_dir) / m.name / "resume")
            folder = rd.latest()
            if folder is not None:
                rd.verify(folder)
                rd.load_state(folder)
    store.restart_run(run_id, process_identity())
    infos = {m.name: m for m in run.models}
    _train_models(store, run_id, specs, infos, {m.name: m.id for m in run.models}, opts, train, val,
                  Path(run.checkpoint_dir), run.train_seconds or 0.0, echo)
    return store.get_run(run_id)


# ---------------------------------------------------------------- studies
def start_study(store: Store, opts: TrainOptions, folds: int, seeds: list[int], compare: dict) -> int:
    """Record a study: K folds x N seeds of one configuration. Its runs are made by `run_study`."""
    load_jsonl(opts.data)  # a bad data file is refused before anything is stored
    specs = resolve_models(opts.models)
    opts.model_configs = record_model_configs(specs, expected_inits(specs, opts), opts)
    config = {"train": {k: v for k, v in vars(opts).items() if k not in ("progress", "fold", "seed")},
              "compare": compare}
    return store.create_study(data_path=str(opts.data), data_sha256=file_sha256(opts.data), folds=folds,
                             seeds=seeds, config=config)


def _study_ready(store: Store, study_id: int, only_fold: int | None) -> StudyInfo:
    """The study, checked: the fold in range and its data file unchanged since it began."""
    study = store.get_study(study_id)
    if only_fold is not None and not 1 <= only_fold <= study.folds:
        raise ConfigError(f"--fold must be between 1 and {study.folds} (study {study_id} has {study.folds} folds)")
    if file_sha256(study.config["train"]["data"]) != study.data_sha256:
        raise ConfigError(f"{study.config['train']['data']} has changed since study {study_id} began "
                          "(its SHA-256 differs); a study's folds must all come from the same data")
    return study


def options_from_config(config: dict) -> TrainOptions:
    """The options a run or study recorded, to make or continue a run with; the loader processes
    are this process's (`device.loader_processes`), not those of the process that recorded them."""
    names = {f.name for f in fields(TrainOptions)}
    opts = TrainOptions(**{k: v for k, v in config.items() if k in names})
    opts.workers = loader_processes(opts.platform)
    return opts


def make_study_run(store: Store, study: StudyInfo, seed: int, fold: int, run: RunInfo | None, echo: Echo,
                   progress: bool, on_comparison: Callable[[Comparison], None] | None = None,
                   lease: Lease | None = None) -> int:
    """One (seed, fold) of a study: its run made (or resumed) and compared. Returns the run id."""
    if run is None:
        opts = options_from_config(study.config["train"])
        opts.seed, opts.fold, opts.progress = seed, fold, progress
        if opts.model_configs is None:
            echo(f"  Study {study.id} was recorded without its models' hyperparameters (an older wmg): this run "
                 "takes this wmg's defaults, recorded with the run (`wmg show`)")
        run_id = train_run(store, opts, echo, study_id=study.id, lease=lease)
    else:
        run_id = run.id
        if run.status != "completed":
            resume_run(store, run_id, echo, progress)
    cmp = study.config["compare"]
    report = cmp.get("report")
    if report:
        p = Path(report)
        report = str(p.with_name(f"{p.stem}.study{study.id}.fold{fold}.seed{seed}{p.suffix}"))
    comparison = compare_run(store, CompareOptions(
        run_id=run_id, max_new_tokens=cmp["max_new_tokens"], precision=cmp["precision"], device=cmp["device"],
        no_repeat_ngram_size=cmp["no_repeat_ngram_size"], location_span=cmp.get("location_span", False),
        report=report, progress=progress, baseline=cmp["baseline"]), echo)
    if on_comparison is not None:
        on_comparison(comparison)
    return run_id


def run_study(store: Store, study_id: int, echo: Echo = print, progress: bool = True, only_fold: int | None = None,
              on_comparison: Callable[[Comparison], None] | None = None) -> StudyInfo:
    """Make every missing run of a study (or of one fold), in (seed, fold) order: each an ordinary
    run, trained and compared. A run of the study that was interrupted is resumed; one that is
    trained but not compared is compared; one running in another process (or held by a
    `wmg work` lease) is left to it."""
    from .interrupt import process_alive

    store.reap_dead_runs(process_alive)
    study = _study_ready(store, study_id, only_fold)
    todo = [(seed, fold) for seed in study.seeds for fold in range(1, study.folds + 1)
            if only_fold is None or fold == only_fold]
    for n, (seed, fold) in enumerate(todo, 1):
        run = next((r for r in store.get_study(study_id).runs if r.seed == seed and r.fold == fold), None)
        banner(echo, f"STUDY {study_id}: FOLD {fold} OF {study.folds}, SEED {seed} ({n} of {len(todo)})")
        if run is not None and run.status == "running":
            echo(f"✓ Run {run.id} is being trained by pid {run.pid} on {run.host}; left to it")
            continue
        if run is not None and run.compared:
            echo(f"✓ Run {run.id} is trained and compared")
            continue
        if run is not None and lease_held(run.lease_until, now()):
            echo(f"✓ Run {run.id} is held by worker {run.lease_owner}; left to it")
            continue
        make_study_run(store, study, seed, fold, run, echo, progress, on_comparison)
    return store.get_study(study_id)


# ---------------------------------------------------------------- comparison
@dataclass
class CompareOptions:
    run_id: int
    data: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    precision: str = "fp32"
    device: str = "cpu"
    no_repeat_ngram_size: int = DEFAULT_NO_REPEAT
    location_span: bool = False  # constrain the location field to a span of the excerpt (generate.LocationSpan)
    report: str | None = "ensemble_report.json"
    progress: bool = True
    baseline: bool = True  # fit the reference baselines on the run's training split and score them too


@dataclass(frozen=True)
class Comparison:
    """What a comparison produced: its evaluation id, the summary and per-example results
    (the report's two parts), and where the report was written."""
    evaluation_id: int
    summary: dict
    results: list[dict]
    names: list[str]
    report_path: str | None


def _usable_models(run: RunInfo) -> list[ModelInfo]:
    if run.status == "running":
        raise ConfigError(f"run {run.id} is still running (or was killed); it has no complete models to compare")
    done = [m for m in run.models if m.status == "completed"]
    if not done:
        raise ConfigError(f"run {run.id} has no trained models (status: {run.status})")
    if len(done) < len(run.models):
        missing = ", ".join(m.name for m in run.models if m.status != "completed")
        raise ConfigError(f"run {run.id} is {run.status}: {missing} did not finish training")
    for m in done:
        if not m.checkpoint_path or not (Path(m.checkpoint_path) / "config.json").exists():
            raise ConfigError(f"checkpoint of {m.name} for run {run.id} is gone: {m.checkpoint_path}")
    return done


def _generate_all(run: RunInfo, models: list[ModelInfo], prompts: list[str], excerpts: list[str],
                  opts: CompareOptions, echo: Echo) -> dict[str, list]:
    from .config import REGISTRY
    from .generate import generate
    from .models import load_trained

    gcfg = GenerateConfig(max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, precision=opts.precision,
                          no_repeat_ngram_size=opts.no_repeat_ngram_size, location_span=opts.location_span)
    out = {}
    for m in models:
        spec = REGISTRY.get(m.name) or ModelSpec(m.name, m.hub_id, m.model_type, "", "", "")
        model, tok = load_trained(spec, m.checkpoint_path)
        limit = m.hyperparams.get("max_input_length", 512) if m.model_type == "seq2seq" else (
            m.hyperparams.get("max_causal_length", 768) - opts.max_new_tokens)
        rule = f", no repeated {opts.no_repeat_ngram_size}-gram" if opts.no_repeat_ngram_size else ""
        rule += ", location constrained to a span of the excerpt" if opts.location_span else ""
        echo(f"  [{m.name}] Generating {len(prompts)} predictions (batched greedy{rule}, max {opts.max_new_tokens} "
             "new tokens)...")
        out[m.name] = generate(model, tok, prompts, m.model_type, gcfg, max(16, limit), device=opts.device,
                               progress=opts.progress, desc=m.name, excerpts=excerpts)
        del model
        free_memory()
    return out


def score(models: list[str], example_gold: str | None, texts: dict[str, str]):
    """Parse each model's text and compute the agreement for one example."""
    parsed = {m: parse_output(texts[m]) for m in models}
    agr = agreement({m: parsed[m].gadget_type for m in models}, example_gold)
    return parsed, agr


def example_rows(example_id: int, gold_type: str | None, texts: dict[str, str],
                 stats: dict[str, tuple[int, float]], gold_output: str | None = None, excerpt: str | None = None):
    """Parse and score one example's outputs and build its store rows.

    `stats` gives each model's (new tokens, generation seconds); ROUGE against
    `gold_output` is computed when it is given, and whether each location is a span of
    `excerpt` when that is. Returns (parsed, agreement, prediction rows, agreement row).
    """
    names = list(texts)
    parsed, agr = score(names, gold_type, texts)
    preds = []
    for m in names:
        p = parsed[m]
        rouge = rouge_f1(texts[m], gold_output) if gold_output is not None else ()
        preds.append(PredictionRow(
            example_id, m, texts[m], p.gadget_type, p.location, p.explanation, p.normalized_type,
            canonical_label(p.gadget_type), p.format_checks, agr.matches_gold[m], *stats[m], *rouge,
            location_in_excerpt=location_in_excerpt(p.location, excerpt) if excerpt is not None else None))
    agr_row = AgreementRow(
        example_id, len(names), agr.full_agreement, agr.unique_types, agr.unique_normalized_types,
        agr.majority_type, agr.majority_normalized, agr.majority_count, agr.majority_matches_gold)
    return parsed, agr, preds, agr_row


def compare_run(store: Store, opts: CompareOptions, echo: Echo = print) -> Comparison:
    """Generate with every model of a run, parse, score agreement, store and report."""
    run = store.get_run(opts.run_id)
    models = _usable_models(run)
    names = [m.name for m in models]
    external = load_jsonl(opts.data) if opts.data else None
    banner(echo, "ENSEMBLE COMPARISON & AGREEMENT ANALYSIS")
    cfg = {"max_new_tokens": opts.max_new_tokens, "batch_size": opts.batch_size, "precision": opts.precision,
           "device": opts.device, "data": opts.data, "no_repeat_ngram_size": opts.no_repeat_ngram_size,
           "location_span": opts.location_span, "data_sha256": file_sha256(opts.data) if opts.data else None}
    eval_id, examples = store.create_evaluation(run.id, opts.data or "validation", cfg, external)
    echo(f"✓ Evaluation {eval_id} of run {run.id}: {len(examples)} examples "
         f"({'every line of ' + opts.data if opts.data else 'the validation split'}), models: {', '.join(names)}")
    start, memory = time.perf_counter(), PeakMemory()
    try:
        prompts = [seq2seq_prompt(x.instruction, x.input) for x in examples]
        gens = _generate_all(run, models, prompts, [x.input for x in examples], opts, echo)
        preds, agrs, results = [], [], []
        for i, x in enumerate(examples):
            texts = {m: gens[m][i].text for m in names}
            stats = {m: (gens[m][i].new_tokens, gens[m][i].seconds) for m in names}
            parsed, agr, rows, agr_row = example_rows(x.id, x.gold_type, texts, stats, x.gold_output, x.input)
            preds += rows
            agrs.append(agr_row)
            results.append({
                "example_id": i, "example_row_id": x.id, "source_line": x.source_line,
                "instruction": x.instruction, "instruction_form": instruction_form(x.instruction),
                "excerpt": x.input, "gold_output": x.gold_output,
                "gold_type": x.gold_type, "predictions": texts,
                "format_checks": {m: parsed[m].format_checks for m in names},
                "location_in_excerpt": {row.model: row.location_in_excerpt for row in rows},
                "agreement": agr.to_dict(),
            })
        base_rows = _baselines(store, run, examples, results, echo) if opts.baseline else []
        summary = summarize(results, names, run, eval_id)
        report_path = write_report(opts.report, summary, results) if opts.report else None
        store.complete_evaluation(eval_id, preds, agrs, time.perf_counter() - start, report_path, base_rows,
                                  peak_rss_mb=memory.mb())
    except BaseException as exc:
        store.fail_evaluation(eval_id, f"{type(exc).__name__}: {exc}")
        raise
    return Comparison(eval_id, summary, results, names, report_path)


def _baselines(store: Store, run: RunInfo, examples, results: list[dict], echo: Echo) -> list[BaselineRow]:
    """Fit the reference baselines on the run's training split, predict every evaluated example,
    and note each prediction in its result record (`baselines`, `baseline_matches_gold`)."""
    from .baseline import fit_predict
    from .parse import normalize_type

    t0 = time.perf_counter()
    train = [Example(x.source_line, x.instruction, x.input, x.gold_output) for x in store.run_examples(run.id, "train")]
    evaluate = [Example(x.source_line, x.instruction, x.input, x.gold_output) for x in examples]
    predicted = fit_predict(train, evaluate, run.seed)
    rows = []
    for i, (x, r) in enumerate(zip(examples, results)):
        gold = normalize_type(x.gold_type) if x.gold_type else None
        r["baselines"], r["baseline_matches_gold"] = {}, {}
        for name, preds in predicted.items():
            hit = bool(gold) and preds[i] is not None and normalize_type(preds[i]) == gold
            r["baselines"][name], r["baseline_matches_gold"][name] = preds[i], hit
            rows.append(BaselineRow(x.id, name, preds[i], hit))
    echo(f"  [baselines] {', '.join(predicted)} fitted on the run's {len(train)} training examples "
         f"({time.perf_counter() - t0:.1f} s)")
    return rows


def summarize(results: list[dict], names: list[str], run: RunInfo, eval_id: int) -> dict:
    """The report's summary: the tutorial's fields, each rate's 95% Wilson interval, and every
    figure again per instruction form (a category-form instruction names the answer)."""
    from .stats import wilson

    def rates(rs: list[dict]) -> dict:
        n = len(rs)
        full = sum(r["agreement"]["full_agreement"] for r in rs)
        out = {"total_examples": n, "full_agreements": full, "full_agreement_rate": full / n if n else None,
               "full_agreement_rate_interval": list(wilson(full, n))}

        def block(key: str, hits: dict[str, int]) -> None:  # a rate and its interval per model or baseline
            out[key] = {m: k / n if n else None for m, k in hits.items()}
            out[key + "_interval"] = {m: list(wilson(k, n)) for m, k in hits.items()}

        block("model_format_accuracy", {m: sum(all(r["format_checks"][m].values()) for r in rs) for m in names})
        # of the well-formed outputs, how many copied their location from the excerpt
        formed = {m: [r for r in rs if all(r["format_checks"][m].values())] for m in names}
        spans = {m: sum(bool(r["location_in_excerpt"][m]) for r in formed[m]) for m in names}
        out["model_location_in_excerpt"] = {m: spans[m] / len(formed[m]) if formed[m] else None for m in names}
        out["model_location_in_excerpt_interval"] = {m: list(wilson(spans[m], len(formed[m]))) for m in names}
        block("model_gold_type_accuracy", {m: sum(bool(r["agreement"]["matches_gold"][m]) for r in rs)
                                           for m in names})
        baselines = list(rs[0].get("baseline_matches_gold", {})) if rs else []
        if baselines:
            block("baseline_gold_type_accuracy", {b: sum(bool(r["baseline_matches_gold"][b]) for r in rs)
                                                  for b in baselines})
        return out

    from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired

    overall = rates(results)
    hits = {m: [int(bool(r["agreement"]["matches_gold"][m])) for r in results] for m in names}
    for b in (list(results[0].get("baseline_matches_gold", {})) if results else []):
        hits[b] = [int(bool(r["baseline_matches_gold"][b])) for r in results]
    systems = list(hits)
    pairs = [{"system_a": a, "system_b": b, **paired(hits[a], hits[b])}
             for i, a in enumerate(systems) for b in systems[i + 1:]] if results else []
    forms: dict[str, list[dict]] = {}
    for r in results:
        forms.setdefault(r["instruction_form"], []).append(r)
    n, full = overall["total_examples"], overall["full_agreements"]
    return {
        "total_examples": n,
        "full_agreements": full,
        "full_agreement_rate": full / n,
        "disagreement_rate": (n - full) / n,
        "model_format_accuracy": overall["model_format_accuracy"],
        "model_gold_type_accuracy": overall["model_gold_type_accuracy"],
        "run_id": run.id,
        "evaluation_id": eval_id,
        "model_init": {m.name: m.init for m in run.models if m.name in names},
        "full_agreement_rate_interval": overall["full_agreement_rate_interval"],
        "model_format_accuracy_interval": overall["model_format_accuracy_interval"],
        "model_gold_type_accuracy_interval": overall["model_gold_type_accuracy_interval"],
        "model_location_in_excerpt": overall["model_location_in_excerpt"],
        "model_location_in_excerpt_interval": overall["model_location_in_excerpt_interval"],
        "interval": "95% Wilson score interval [low, high]",
        **{k: v for k, v in overall.items() if k.startswith("baseline_")},
        "by_instruction_form": {f: rates(rs) for f, rs in sorted(forms.items())},
        "paired_gold_type": pairs,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                      "interval": "percentile, 95%, resampling examples (the paired differences)"},
    }


def write_report(path: str, summary: dict, results: list[dict]) -> str:
    """Write the JSON report atomically (a crash never leaves half a report)."""
    from .checkpoint import atomic_write_text

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({"summary": summary, "results": results}, indent=2, ensure_ascii=False))
    return str(target)


# ---------------------------------------------------------------- custom excerpt
def predict(store: Store, run_id: int, instruction: str, excerpt: str, opts: CompareOptions, echo: Echo = print) -> dict:
    run = store.get_run(run_id)
    models = _usable_models(run)
    names = [m.name for m in models]
    opts.progress = False
    gens = _generate_all(run, models, [seq2seq_prompt(instruction, excerpt)], [excerpt], opts, echo)
    texts = {m: gens[m][0].text for m in names}
    parsed, agr = score(names, None, texts)
    return {"predictions": texts,
            "parsed": {m: {**vars(parsed[m]), "normalized_type": parsed[m].normalized_type,
                           "format_checks": parsed[m].format_checks,
                           "location_in_excerpt": location_in_excerpt(parsed[m].location, excerpt)} for m in names},
            "agreement": {k: v for k, v in agr.to_dict().items() if k not in ("matches_gold", "gold_normalized")}}
