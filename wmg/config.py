"""Model registry and run configuration.

Everything a run depends on is a frozen dataclass, so a run can be recorded as
plain JSON and reproduced from it. Adding a model is one `ModelSpec` entry in
`REGISTRY`: the architecture dict is the published config of the model, used to
build it from scratch when the hub is out of reach.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

ModelType = Literal["seq2seq", "causal"]
Init = Literal["pretrained", "scratch", "auto"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str
    type: ModelType
    description: str
    architecture: str
    params: str
    # Published config (without vocabulary-dependent ids); scratch builds use it
    # with the vocabulary of a tokenizer trained on the data.
    config: dict[str, Any] = field(default_factory=dict)
    published_vocab_size: int = 0
    # Tokenizer family for scratch init: "unigram" (T5) or "bytelevel-bpe" (GPT-2).
    scratch_tokenizer: str = "unigram"


_T5_SMALL = dict(
    d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
_T5_BASE = dict(_T5_SMALL, d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="flan-t5-small",
            hub_id="google/flan-t5-small",
            type="seq2seq",
            description="Instruction-tuned T5, small",
            architecture="Bidirectional encoder + autoregressive decoder",
            params="77M",
            config=_T5_SMALL,
            published_vocab_size=32128,
            scratch_tokenizer="unigram",
        ),
        ModelSpec(
            name="distilgpt2",
            hub_id="distilgpt2",
            type="causal",
            description="GPT-2 distilled to 6 layers",
            architecture="Decoder-only, left-to-right attention",
            params="82M",
            config=dict(n_layer=6, n_embd=768, n_head=12, n_positions=1024, n_inner=None,
                        activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1,
                        attn_pdrop=0.1, layer_norm_epsilon=1e-5, tie_word_embeddings=True),
            published_vocab_size=50257,
            scratch_tokenizer="bytelevel-bpe",
        ),
        ModelSpec(
            name="flan-t5-base",
            hub_id="google/flan-t5-base",
            type="seq2seq",
            description="Larger instruction-tuned T5",
            architecture="Bidirectional encoder + autoregressive decoder",
            params="248M",
            config=_T5_BASE,
            published_vocab_size=32128,
            scratch_tokenizer="unigram",
        ),
    ]
}

DEFAULT_MODELS = ("flan-t5-small", "distilgpt2")


class ConfigError(ValueError):
    """A user-facing configuration problem (reported as one line by the CLI)."""


# The environment variables wmg reads as numbers: (kind, default, what it sets).
ENV_NUMBERS: dict[str, tuple[type, float, str]] = {
    "WMG_BUSY_TIMEOUT_MS": (int, 30000, "how long a store transaction waits for a lock, in ms"),
    "WMG_PROGRESS_EVERY": (float, 30.0, "seconds between plain progress lines"),
    "WMG_TRIM_STEPS": (int, 1, "optimizer steps between heap trims (0: never)"),
    "WMG_MMAP_THRESHOLD": (int, 4 << 20, "allocations from this size up are served by mmap (0: glibc's own rule)"),
}


def env_number(name: str) -> int | float:
    """The number >= 0 in the environment variable `name` (one of ENV_NUMBERS), else its default;
    anything else is refused in one line (ConfigError)."""
    import math
    import os

    kind, default, what = ENV_NUMBERS[name]
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < 0 or (kind is float and not math.isfinite(value)):
        expected = "a whole number >= 0" if kind is int else "a number >= 0"
        raise ConfigError(f"{name}={raw!r}: expected {expected} ({what})")
    return value


def check_environment() -> None:
    """Every numeric WMG_ setting read once, so that a bad one stops a command before it starts."""
    for name in ENV_NUMBERS:
        env_number(name)


def resolve_models(names: str | list[str] | tuple[str, ...]) -> list[ModelSpec]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ConfigError("no models given")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown model {unknown[0]!r}; known models: {', '.join(REGISTRY)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"model listed twice: {','.join(names)}")
    return [REGISTRY[n] for n in names]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one model's training. Recorded per model in the store."""

    learning_rate: float
    epochs: int
    micro_batch_size: int
    grad_accum: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    max_input_length: int
    max_target_length: int
    max_causal_length: int
    causal_loss: Literal["answer", "full"] = "answer"
    # Causal models under causal_loss="full": the loss weight of the prompt's tokens (instruction
    # and excerpt), the answer's weighing 1 (OpenAI's fine-tuning `prompt_loss_weight`; Shi et al.,
    # 2024, "Instruction Tuning With Loss Over Instructions"). 1 is the tutorial's full loss.
    prompt_loss_weight: float = 1.0
    dropout: float | None = None  # None keeps the model's published dropout
    precision: Literal["fp32", "bf16"] = "fp32"
    schedule: Literal["linear", "cosine"] = "linear"
    log_every: int = 10
    seed: int = 42
    num_workers: int = 0
    group_by_length: bool = True
    # The scratch recipe (issue 13); each is off (1, false, 0) on the pretrained path.
    type_loss_weight: float = 1.0  # loss weight of the gadget_type value's tokens
    location_loss_weight: float = 1.0  # loss weight of the location value's tokens
    unlikelihood: float = 0.0  # weight of the unlikelihood term against repeating answer tokens (train.unlikelihood_sum)
    label_smoothing: float = 0.0  # training targets: 1 - eps on the gold token, eps over the vocabulary
    quote_mix: int = 0  # cue-quoting examples per training excerpt mixed into fine-tuning (recipe.cue_quotes)
    quote_shuffle: bool = False  # the quoting examples' excerpts with their words in a random order
    open_copies: bool = False  # train also on an open-form copy of each example whose instruction names its label
    dev_fraction: float = 0.0  # >0: hold out this share of the training split and keep the epoch best on it
    # >0: the weights of the last K epochs' ends averaged, kept if they score at least as well on the
    # development slice as the best epoch (or always without one); wmg.train.WeightAverage
    average_epochs: int = 0
    tapt_epochs: int = 0  # task-adaptive pretraining epochs on the training excerpts before fine-tuning
    tapt_denoise: bool = True  # pretraining includes span corruption (T5) / language modelling (GPT-2)
    tapt_quotes: int = 0  # quoting examples (random spans of the excerpt) per excerpt and pretraining epoch
    optimizer: Literal["adamw", "adamw-scale"] = "adamw"  # adamw-scale: steps scaled by each weight's RMS (wmg.optim)
    # T5 built from scratch with its output layer tied to the input embedding (T5 v1.0's way, decoder
    # outputs scaled by d_model^-0.5); FLAN-T5 is published untied. GPT-2 is tied either way.
    tie_embeddings: bool = False
    # A model built from scratch with a copy head (wmg.copyhead): each output token may be copied from
    # the excerpt (T5's input, or the excerpt in GPT-2's prompt) by a pointer, and with `span` also by continuing
    # the text after the place that matches the last tokens written. Off on the pretrained path (it
    # changes the architecture).
    copy_head: Literal["off", "pointer", "span"] = "off"  # span: the pointer and a continuation of the text
    # Where the copy head may copy: every output token, or only inside the location field (the type
    # and explanation then come from the vocabulary alone, as without the head; wmg.copyhead).
    copy_scope: Literal["everywhere", "location"] = "everywhere"
    # With a copy head: weight of the vocabulary distribution's own cross-entropy where the mixture
    # applies, beside the mixture's (wmg.train.vocab_sum), so the trunk still learns to write the
    # copied tokens itself.
    copy_vocab_loss: float = 0.0

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum

    @property
    def averages_validly(self) -> bool:
        """average_epochs is 0 (off) or a window of 2 to `epochs` epochs."""
        return not self.average_epochs or 2 <= self.average_epochs <= self.epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "TrainConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def recorded(cls, model: str, values: dict[str, Any]) -> "TrainConfig":
        """A model's hyperparameters as a store recorded them. A name this wmg does not know, or
        a required one missing, is refused in one line: the model cannot be rebuilt as recorded
        by this version. A field added since takes its dataclass default, which is the behaviour
        before the field existed (the defaults that changed live in SCRATCH_DEFAULTS)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{model}: the recorded hyperparameter(s) {', '.join(unknown)} are unknown to this "
                              "wmg, so it cannot rebuild the model as recorded; use the wmg version that recorded them")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{model}: the recorded hyperparameters are incomplete ({exc})") from None


# The tutorial's hyperparameters: sensible for fine-tuning pretrained weights.
PRETRAINED_DEFAULTS = TrainConfig(
    learning_rate=5e-5, epochs=3, micro_batch_size=1, grad_accum=4, warmup_ratio=0.0,
    weight_decay=0.0, max_grad_norm=1.0, max_input_length=512, max_target_length=256,
    max_causal_length=768, schedule="linear",
)

# From random weights a model needs a far higher learning rate, warmup and many
# more steps before it emits the output format (DESIGN.md's measured probe), and
# every example the data has: scratch runs default to the whole file (6 epochs; on the
# 1584 bundled lines that is well over an hour for both models on a 2-core CPU, README
# "The default run on each kind of 2-core CPU").
# Dropout: its random masks cost a third of each training step (measured on AMX:
# T5-small 1.87 s -> 1.19 s per batch of 8 without them), so it is on only where it was
# measured to pay: flan-t5-small overfits from its second epoch without it (validation loss
# 3.56 -> 4.11, training loss 0.08), and the published rate 0.1 gave +5.1 open-form points
# on fold 1 and +8.7 out of distribution (p = 0.0038; README "Scratch recipe").
#
# The scratch recipe (README "Scratch recipe", each lever measured on the same fold): the
# label's tokens weigh 5 in the loss, every example whose instruction names its label is also
# trained in the open form, the epoch kept is the best on a tenth of the training split held out
# as a development slice, and T5 steps are scaled by each weight's size (AdamWScale, lr 1e-2).
# T5 gets the `span` copy head (wmg.copyhead): on fold 1 of the 1056-line study its locations
# went from 0% to 88.6% spans of the excerpt (84.7% out of distribution), gold type -1.4 points
# (p = 0.74). GPT-2 does not: on the same fold the head (its pointer on the prompt's excerpt)
# took its locations from 6.5% to 85.3% and its format from 94.3% to 99.5%, but its gold type
# out of distribution from 80.7% to 69.7% (p = 0.0003). Confined to the location field
# (`copy_scope="location"`, with the 1320 lines' feature block on fold 1) it still cost GPT-2 8.4
# open-form points (p = 0.0044) and T5 6.4 out of distribution (p = 0.0076). What GPT-2 lost was
# the training signal of writing the location itself: with `copy_vocab_loss=1` (the vocabulary
# alone also scored on the location's tokens) the scoped head kept its gold type on fold 1 of the
# 1320 lines (-1.0 open form, p = 0.86; +0.4 out of distribution, p = 1.0) and quoted its location
# in 90.0% of its well-formed outputs (5.0% without a head), so GPT-2 now gets that head.
# T5 reaches its batch of 8 as 4 examples x 2 accumulated: on fold 1 its training peaked at
# 2.65 GB resident against 3.41 GB with 8 at once (the run that also had lines 1057-1320), the gold type
# unchanged (84.0% against 82.1% held out, p = 0.56; 78.8% out of distribution both) and a step
# no slower on one Zen 4 core.
# T5 trains with label smoothing 0.1 (Szegedy et al., 2016; the Transformer's own setting,
# Vaswani et al., 2017): on fold 1 of the 1320 lines, paired by line with the same fold's
# defaults, +2.3 points held out (p = 0.38), +3.4 on the open form (p = 0.26), +0.0 out of
# distribution. GPT-2 does not: -0.4 held out, -1.5 open form (p = 0.72) on the same fold.
SCRATCH_DEFAULTS = {
    "seq2seq": TrainConfig(
        learning_rate=1e-2, epochs=6, micro_batch_size=4, grad_accum=2, warmup_ratio=0.1,
        weight_decay=0.01, max_grad_norm=1.0, max_input_length=512, max_target_length=256,
        max_causal_length=768, schedule="cosine", dropout=0.1,
        type_loss_weight=5.0, open_copies=True, dev_fraction=0.1, optimizer="adamw-scale", copy_head="span",
        label_smoothing=0.1,
    ),
    "causal": TrainConfig(
        learning_rate=6e-4, epochs=6, micro_batch_size=8, grad_accum=1, warmup_ratio=0.1,
        weight_decay=0.01, max_grad_norm=1.0, max_input_length=512, max_target_length=256,
        max_causal_length=768, schedule="cosine", dropout=0.0,
        type_loss_weight=5.0, open_copies=True, dev_fraction=0.1,
        copy_head="span", copy_scope="location", copy_vocab_loss=1.0,
    ),
}
# Examples used when --examples is not given: the tutorial's 100 for fine-tuning
# pretrained weights; every line for scratch init.
DEFAULT_EXAMPLES = {"pretrained": 100, "scratch": None}

# Vocabulary size of the tokenizers trained on the data for scratch init.
SCRATCH_VOCAB = {"unigram": 4000, "bytelevel-bpe": 4000}


def defaults_for(spec: ModelSpec, init: str) -> TrainConfig:
    return PRETRAINED_DEFAULTS if init == "pretrained" else SCRATCH_DEFAULTS[spec.type]


# The comparison's default for GenerateConfig.no_repeat_ngram_size: greedy decoding that never
# generates the same 3-gram twice (the usual setting for summarization). Measured on the default
# scratch run: plain greedy left 32% of flan-t5-small's outputs looping until the token limit
# ("location: : : : ..."), so they lacked a field; with the ban every output was well-formed and
# gold-type accuracy was unchanged. 0 gives plain greedy, as the tutorial and `wmg bench` use.
DEFAULT_NO_REPEAT = 3


@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int = 256
    batch_size: int = 16
    precision: Literal["fp32", "bf16"] = "fp32"
    no_repeat_ngram_size: int = 0  # 0: plain greedy, as the tutorial; n: no n-gram generated twice
    location_span: bool = False  # the location field constrained to a span of the excerpt (generate.LocationSpan)


def has_copy_head(config) -> bool:
    """Whether a model config (or a config.json's dict) asks for wmg.copyhead's head."""
    value = config.get("copy_head") if isinstance(config, dict) else getattr(config, "copy_head", None)
    return value in ("pointer", "span")
