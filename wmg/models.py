"""Build models: pretrained from the hub (or a local folder), or the published
architecture with random weights and a tokenizer trained on the data.

`init="auto"` uses pretrained weights when they can be loaded and otherwise
scratch, and says so; the init actually used is returned so it can be recorded.
A scratch model is never passed off as pretrained.
"""
from __future__ import annotations

import os
import socket
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from .config import SCRATCH_VOCAB, ConfigError, ModelSpec, has_copy_head
from .console import quiet_transformers


@dataclass
class Built:
    model: Any
    tokenizer: Any
    init: str  # "pretrained" or "scratch"
    note: str  # why this init (shown to the user and recorded)


def _auto_classes(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if spec.type == "seq2seq" else AutoModelForCausalLM


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so `auto` does not wait out HTTP retries offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained(spec: ModelSpec, source: str | None = None, local_only: bool = False) -> tuple[Any, Any]:
    quiet_transformers()
    from transformers import AutoTokenizer

    src = source or spec.hub_id
    tok = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
    model = _auto_classes(spec).from_pretrained(src, local_files_only=local_only)
    if spec.type == "causal" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def train_tokenizer(spec: ModelSpec, texts: Iterable[str], vocab_size: int | None = None):
    """A tokenizer of the model's family trained on `texts` with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .recipe import sentinel_tokens

    vocab_size = vocab_size or SCRATCH_VOCAB[spec.scratch_tokenizer]
    texts = list(texts)
    if spec.scratch_tokenizer == "unigram":
        # T5 family: SentencePiece-style Unigram over Metaspace, with T5's special ids
        # (pad 0, </s> 1, unk 2); the decoder starts from pad, as T5 does.
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
            initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
            max_piece_length=16, show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        tok = _canonical_unigram(tok)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
        # T5's 100 sentinels (<extra_id_0> ...) after the learned pieces, as in the published
        # vocabulary: span corruption (recipe.tapt_examples) needs them.
        sentinels = sentinel_tokens()
        tok.add_special_tokens(sentinels)
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                       additional_special_tokens=sentinels)
    if spec.scratch_tokenizer == "bytelevel-bpe":
        # GPT-2 family: byte-level BPE, one special token serving as BOS, EOS and pad.
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        eos = "<|endoftext|>"
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos)
    raise ConfigError(f"unknown scratch tokenizer {spec.scratch_tokenizer!r}")


def _canonical_unigram(tok):
    """Make the trained Unigram vocabulary reproducible.

    The trainer appends the characters it must keep (rare and alphabet ones)
    with a fixed set of low scores handed out in hash order, so the same data
    gives different ids from run to run. The characters of that band get the
    band's scores in alphabetical order instead, and all pieces are ordered by
    score, then text.
    """
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    special, rest = vocab[:3], [[p, round(s, 6)] for p, s in vocab[3:]]
    singles = [ps for ps in rest if len(ps[0]) == 1]
    if singles:
        low = min(s for _, s in singles)
        band = [ps for ps in singles if ps[1] <= low + 0.01]
        scores = sorted((s for _, s in band), reverse=True)
        for ps, score in zip(sorted(band, key=lambda ps: ps[0]), scores):
            ps[1] = score
    spec["model"]["vocab"] = special + sorted(rest, key=lambda ps: (-ps[1], ps[0]))
    return Tokenizer.from_str(json.dumps(spec))


def build_config(spec: ModelSpec, vocab_size: int, pad_id: int, eos_id: int, overrides: dict | None = None):
    """The published architecture with this vocabulary (overrides make tiny test models)."""
    from transformers import GPT2Config, T5Config

    cfg = dict(spec.config, **(overrides or {}))
    if spec.type == "seq2seq":
        return T5Config(vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id,
                        decoder_start_token_id=pad_id, **cfg)
    return GPT2Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, **cfg)


def model_from_config(spec: ModelSpec, config):
    """Instantiate with random weights, keeping the published (un)tying of the output layer.

    transformers 5 ties T5's output layer to the input embedding whatever the
    config says, and keeps what was asked as `scale_decoder_outputs` (T5 v1.0, tied, scales the
    decoder's output by d_model^-0.5; v1.1 does not); FLAN-T5 is published with a separate
    output layer, so untie it unless the config asked for a tied one.
    """
    import torch
    from transformers import GPT2LMHeadModel, T5ForConditionalGeneration

    if spec.type == "seq2seq":
        if has_copy_head(config):
            from .copyhead import T5WithCopy

            model = T5WithCopy(config)
        else:
            model = T5ForConditionalGeneration(config)
        if not config.scale_decoder_outputs and model.lm_head.weight is model.shared.weight:
            std = config.initializer_factor * config.d_model ** -0.5
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * std)
            getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
        return model
    if has_copy_head(config):
        from .copyhead import GPT2WithCopy

        return GPT2WithCopy(config)
    return GPT2LMHeadModel(config)


def build_scratch(spec: ModelSpec, corpus: Iterable[str], vocab_size: int | None = None,
                  overrides: dict | None = None) -> tuple[Any, Any]:
    quiet_transformers()
    tok = train_tokenizer(spec, corpus, vocab_size)
    overrides = dict(overrides or {})
    if overrides.pop("copy_scope", "everywhere") == "location" and has_copy_head(overrides):
        # the copy head mixes only inside the answer's location field (wmg.copyhead.location_field):
        # the tokens of `location:` as they stand in an answer, and every token containing `;`
        marker = tok(" location:" if spec.type == "causal" else "location:", add_special_tokens=False)["input_ids"]
        closers = sorted(i for piece, i in tok.get_vocab().items() if ";" in piece)
        overrides["copy_field"] = [marker, closers]
    if spec.type == "causal" and has_copy_head(overrides):
        from .prompts import EXCERPT_CLOSES, EXCERPT_OPENS

        # GPT-2's copy head points into the excerpt, found between these tokens (wmg.copyhead)
        overrides = dict(overrides, copy_region=[tok(m, add_special_tokens=False)["input_ids"]
                                                 for m in (EXCERPT_OPENS, EXCERPT_CLOSES)])
    config = build_config(spec, len(tok), tok.pad_token_id, tok.eos_token_id, overrides or None)
    return model_from_config(spec, config), tok


def build(spec: ModelSpec, init: str, corpus: Iterable[str], source: str | None = None,
          vocab_size: int | None = None, overrides: dict | None = None, echo=print) -> Built:
    """Build one model for training with the requested init."""
    if init == "scratch":
        model, tok = build_scratch(spec, corpus, vocab_size, overrides)
        return Built(model, tok, "scratch", "scratch init requested")
    src = source or spec.hub_id
    local = Path(src).is_dir()
    if init == "pretrained":
        try:
            model, tok = load_pretrained(spec, src)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load pretrained {spec.name} from {src!r}: {str(exc).splitlines()[0]}") from None
        return Built(model, tok, "pretrained", f"pretrained weights from {src}")
    # auto: the local cache first, then the hub if it answers, otherwise scratch.
    try:
        model, tok = load_pretrained(spec, src, local_only=True)
        return Built(model, tok, "pretrained", f"pretrained weights from {'folder' if local else 'the local cache of'} {src}")
    except (OSError, ValueError):
        pass
    if not local and hub_reachable():
        try:
            model, tok = load_pretrained(spec, src)
            return Built(model, tok, "pretrained", f"pretrained weights from the hub ({src})")
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
    else:
        reason = "the model hub is not reachable and the weights are not cached"
    echo("!" * 80)
    echo(f"! {spec.name}: PRETRAINED WEIGHTS UNAVAILABLE ({reason}).")
    echo("! Falling back to SCRATCH init: the published architecture with RANDOM weights")
    echo("! and a tokenizer trained on this run's training split. Recorded as init=scratch.")
    echo("!" * 80)
    model, tok = build_scratch(spec, corpus, vocab_size, overrides)
    return Built(model, tok, "scratch", f"auto: {reason}")


def fuse_gelu(model) -> int:
    """Swap transformers' Python-level tanh GELU (`gelu_new`, five element-wise kernels) for
    the same formula in one fused kernel (`F.gelu(approximate="tanh")`); T5 and GPT-2 both
    use it. The function is the same up to rounding; the saved config is untouched.
    Returns how many activations were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


def set_dropout(model, p: float) -> None:
    """Set every dropout of a built model (nn.Dropout modules and T5's attention-probability rate)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = p
    for key in ("dropout_rate", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)


def pretrained_available(spec: ModelSpec, source: str | None = None) -> bool:
    """Whether `auto` init will find pretrained weights: a local folder, the local cache, or a reachable hub."""
    if source and Path(source).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str):
            return True
    except ImportError:  # pragma: no cover - comes with transformers
        pass
    return hub_reachable()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_trained(spec: ModelSpec, path: str | Path) -> tuple[Any, Any]:
    """Load a run's saved model (safetensors only) and tokenizer from `final_model`."""
    from .checkpoint import CheckpointError, load_model_folder

    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"checkpoint for {spec.name} is missing: {path}")
    quiet_transformers()
    try:
        model, tok = load_model_folder(path, spec.type)
    except CheckpointError as exc:
        raise ConfigError(f"checkpoint for {spec.name}: {exc}") from None
    if spec.type == "causal" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fuse_gelu(model)
    return model, tok
