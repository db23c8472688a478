"""The `wmg` command line. Thin: each command parses and checks its options, calls library
code, and hands the results to `wmg.console` to render. torch and transformers are
imported inside command bodies so `wmg --help` and `wmg runs` answer instantly.

Output convention (every command that prints results): `--format table|json|csv`,
`--table NAME` for one of several tables, `--out DIR` for one file per table, `--quiet`
for no banners or progress. With json or csv, stdout holds only the result."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from . import progress as _progress
from .checkpoint import CheckpointError
from .config import DEFAULT_MODELS, DEFAULT_NO_REPEAT, REGISTRY, ConfigError
from .console import FORMATS, OutputError
from .data import DataError, parse_examples_option
from .distributed import torchrun_aware
from .interrupt import RunInterrupted, Terminated, terminate_as_interrupt
from .judges.base import JudgeError
from .store.session import StoreError

DB_HELP = "Results store: a SQLite file path or any SQLAlchemy URL [env WMG_DB; default results.db]."


def db_option(f):
    """--db: the command's one `Store` (built here, opened on first use), its parameter `store`."""
    from .store import Store

    return click.option("--db", "store", envvar="WMG_DB", default=None, metavar="URL|PATH", help=DB_HELP,
                        callback=lambda _ctx, _param, value: Store(value))(f)


def handle_errors(f):
    """Known problems become one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return f(*args, **kwargs)
        except OutputError as exc:
            raise click.UsageError(str(exc)) from None
        except (ConfigError, DataError, StoreError, JudgeError, CheckpointError) as exc:
            raise click.ClickException(str(exc)) from None
        except RunInterrupted as exc:
            click.echo(f"Interrupted: {exc}", err=True)
            sys.exit(143 if exc.signal_name == "SIGTERM" else 130)
        except SQLAlchemyError as exc:
            from .store.session import explain

            msg = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise click.ClickException(f"results store error: {explain(msg)}") from None
        except KeyboardInterrupt as exc:
            click.echo("Interrupted" + (" by SIGTERM" if isinstance(exc, Terminated) else ""), err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


def echo(msg: str = "") -> None:
    """Banners and logs for people: stdout with --format table, stderr with json/csv, nothing with --quiet."""
    _progress.log(msg)


def warn(msg: str) -> None:
    click.echo(msg, err=True)


class Id(click.ParamType):
    """A positive whole number naming a stored row (a run, a comparison)."""

    def __init__(self, what: str, metavar: str):
        self.what, self.name = what, metavar

    def get_metavar(self, param, ctx=None):
        return self.name

    def convert(self, value, param, ctx):
        try:
            v = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {self.what} (a positive whole number)", param, ctx)
        if v < 1:
            self.fail(f"{value!r} is not {self.what} (a positive whole number)", param, ctx)
        return v


RUN_ID = Id("a run id", "RUN_ID")
STUDY_ID = Id("a study id", "STUDY_ID")
EVALUATION_ID = Id("an evaluation id", "EVALUATION_ID")


class Examples(click.ParamType):
    """`--examples`: a number of at least 2, `all`, or `auto`."""
    name = "N|all|auto"

    def get_metavar(self, param, ctx=None):
        return "N|all|auto"

    def convert(self, value, param, ctx):
        try:
            return parse_examples_option(value)
        except DataError as exc:
            self.fail(str(exc).replace("--examples ", ""), param, ctx)


@dataclass(frozen=True)
class Output:
    fmt: str = "table"
    table: str | None = None
    out: str | None = None

    @property
    def machine(self) -> bool:
        return self.fmt != "table"

    def emit(self, tables) -> None:
        from .console import emit

        emit(tables, self.fmt, self.table, self.out, echo=click.echo, warn=warn)


def output_options(tables: tuple[str, ...], json_alias: bool = False, quiet: bool = True,
                   extra_formats: tuple[str, ...] = (), out_option: bool = True):
    """--format/--table/--out (and --quiet, and --json where a command had it) for a command whose
    results are the named tables; the command receives `output: Output`. `extra_formats` are
    formats the command renders itself (`wmg show --format toml`). Without `out_option` the command
    has its own --out (`wmg export`) and its tables are printed."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, fmt, table, out=None, **kwargs):
            as_json = kwargs.pop("as_json", False)
            be_quiet = kwargs.pop("quiet", False)
            if as_json:
                fmt = "json"
            _progress.configure(quiet=be_quiet, logs_to_stderr=fmt != "table")
            return f(*args, output=Output(fmt, table, out), **kwargs)

        opts = [
            click.option("--format", "fmt", type=click.Choice(FORMATS + extra_formats), default="table",
                         show_default=True,
                         help="table: aligned text; json: a list of flat records; csv: one table (see --table)"
                              + "".join(f"; {x}: see above" for x in extra_formats) + "."),
            click.option("--table", "table", type=click.Choice(tables), default=None,
                         help=f"Only this table [{', '.join(tables)}; csv: the first]." if len(tables) > 1 else
                         "Only this table (the command has one).",
                         hidden=len(tables) == 1),
        ]
        if out_option:
            opts.append(click.option("--out", "out", type=click.Path(file_okay=False), default=None, metavar="DIR",
                                     help="Write each table to DIR/NAME.csv|json|txt instead of printing."))
        if json_alias:
            opts.append(click.option("--json", "as_json", is_flag=True, help="Same as --format json."))
        if quiet:
            opts.append(click.option("--quiet", "-q", "quiet", is_flag=True,
                                     help="No banners, logs or progress: only the results (and errors)."))
        for opt in reversed(opts):
            wrapper = opt(wrapper)
        return wrapper

    return decorate


class OneLineErrors(click.Group):
    """Usage errors (a run id that is not a number, an unknown option) as one line on stderr,
    not click's usage block; the exit status stays click's (2 for usage, 1 otherwise)."""

    def main(self, args=None, prog_name=None, **extra):
        terminate_as_interrupt()
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `wmg` / `wmg analyze`: the help
                click.echo(exc.format_message())
                sys.exit(0)
            msg = exc.format_message()
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                msg += f" (see `{ctx.command_path} -h`)"
            click.echo(f"Error: {msg}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wmg")
def main():
    """wmg: fine-tune small language models to spot weird-machine gadgets in PLC manual
    excerpts, compare their predictions, and keep every result in a SQLite store."""
    from .config import check_environment

    try:
        check_environment()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


NO_REPEAT = click.option("--no-repeat-ngram-size", "no_repeat", type=click.IntRange(0), default=DEFAULT_NO_REPEAT,
                         show_default=True, help="Greedy decoding never repeats an n-gram of this length (0: plain greedy, as the tutorial). Breaks the loops an undertrained model falls into; recorded with the evaluation.")
LOCATION_SPAN = click.option(
    "--location-span/--no-location-span", "location_span", default=False, show_default=True,
    help="Constrain the location field to a span of the excerpt while decoding (each token must continue the "
         "excerpt's own text); recorded with the evaluation.")


# ---------------------------------------------------------------- train
POSITIVE = click.FloatRange(0, min_open=True)
DATA_HELP = "JSONL dataset: one {instruction, input, output} object per line [default: the bundled dataset]."


def resolve_data(data: str | None) -> str:
    """The data file to use: the one given, or the dataset shipped with the package. The choice is printed."""
    from .data import bundled_data

    if data is None:
        path = str(bundled_data())
        echo(f"✓ Data: {path} (the bundled dataset)")
        return path
    if not Path(data).is_file():
        raise DataError(f"{data}: data file not found")
    echo(f"✓ Data: {data}")
    return data


def show_comparison(comparison, output: Output, show_examples: bool) -> None:
    from .console import comparison_table, show_example, show_summary

    if show_examples:
        for i, r in enumerate(comparison.results):
            show_example(echo, i, len(comparison.results), r, comparison.names)
    if output.machine or output.out:
        show_summary(echo, comparison.summary, comparison.report_path)
        output.emit([comparison_table(comparison.summary)])
    else:  # the summary is the result: shown even with --quiet
        show_summary(click.echo, comparison.summary, comparison.report_path)


def _read_config(ctx, _param, path):
    """--config FILE (eager): its keys become the command's defaults, so the command line overrides them."""
    if path is None:
        return None
    from .runconfig import RunConfigError, read

    try:
        ctx.default_map = {**(ctx.default_map or {}), **read(path, ctx.command.params)}
    except RunConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=_param) from None
    return path


def _given(ctx, name: str) -> bool:
    """Was this option set by the user: on the command line or in the --config file?"""
    return ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                              click.core.ParameterSource.DEFAULT_MAP)


@main.command(short_help="Train every model on one split, then compare them.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
              callback=_read_config, metavar="FILE",
              help="Read options from a TOML file: one key per option (learning_rate = 0.01, models = "
                   "\"distilgpt2\"); the command line overrides it. `wmg show --run-id N --format toml` writes one "
                   "that trains run N again.")
@click.option("--data-sha256", default=None, metavar="HEX",
              help="Refuse to train unless the data file has this SHA-256 (a config written by `wmg show` sets it).")
@click.option("--data", default=None, type=click.Path(dir_okay=False), metavar="PATH", help=DATA_HELP)
@click.option("--models", default=",".join(DEFAULT_MODELS), show_default=True, metavar="NAMES",
              help=f"Comma-separated models to train, from the registry: {', '.join(REGISTRY)}.")
@click.option("--examples", type=Examples(), default="auto", show_default=True,
              help="How many examples to subsample before the split: a number, 'all', or 'auto' (the tutorial's "
                   "100 when every model loads pretrained weights, all of them for scratch init).")
@click.option("--eval-split", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction held out as the validation split every model is compared on (between 0 and 1).")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the subsample, split, init and order.")
@click.option("--init", type=click.Choice(["auto", "pretrained", "scratch"]), default="auto", show_default=True,
              help="pretrained: from_pretrained (hub id or cache); scratch: published architecture with random "
                   "weights and a tokenizer trained on the training split; auto: pretrained if it loads, else "
                   "scratch (announced and recorded).")
@click.option("--weights", "weights", multiple=True, metavar="MODEL=PATH",
              help="Load a model's pretrained weights from a local folder instead of its hub id (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Epochs [pretrained 3; scratch 6].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Dropout of every layer [pretrained: the published 0.1; scratch: 0.1 seq2seq (it overfits "
                   "without), 0 causal (a third faster per step on a CPU)].")
@click.option("--learning-rate", "--lr", "learning_rate", type=POSITIVE, default=None, metavar="LR",
              help="Peak learning rate [pretrained 5e-5; scratch 1e-2 seq2seq (with adamw-scale), 6e-4 causal].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Micro-batch size [pretrained 1; scratch: 4 seq2seq, 8 causal].")
@click.option("--grad-accum", type=click.IntRange(1), default=None,
              help="Micro-batches per optimizer step (effective batch = batch size x this) [pretrained 4; scratch: 2 "
                   "seq2seq, 1 causal].")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=None,
              help="Fraction of steps of linear warmup [0; scratch 0.1].")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default=None,
              help="Decay after warmup [pretrained linear; scratch cosine].")
@click.option("--weight-decay", type=click.FloatRange(0), default=None, help="AdamW weight decay [0; scratch 0.01].")
@click.option("--max-grad-norm", type=POSITIVE, default=None, help="Gradient clipping norm [1.0].")
@click.option("--max-input-length", type=click.IntRange(8), default=None, help="Seq2seq prompt tokens [512].")
@click.option("--max-target-length", type=click.IntRange(8), default=None, help="Answer tokens [256].")
@click.option("--max-causal-length", type=click.IntRange(16), default=None, help="Causal prompt+answer tokens [768].")
@click.option("--causal-loss", type=click.Choice(["answer", "full"]), default=None,
              help="Causal models: loss on the answer tokens only (default) or on the whole sequence (the tutorial).")
@click.option("--prompt-loss-weight", type=click.FloatRange(0, min_open=True), default=None, metavar="W",
              help="Causal models under --causal-loss full: loss weight of the prompt's tokens (instruction and "
                   "excerpt) against 1 for the answer's [1].")
@click.option("--type-loss-weight", type=click.FloatRange(0, min_open=True), default=None,
              help="Loss weight of the gadget_type value's tokens [1; scratch 5].")
@click.option("--location-loss-weight", type=click.FloatRange(0, min_open=True), default=None,
              help="Loss weight of the location value's tokens (the span quoted from the excerpt) [1].")
@click.option("--unlikelihood", type=click.FloatRange(0), default=None, metavar="ALPHA",
              help="Weight of the unlikelihood term (Welleck et al., 2020) that penalises the answer's "
                   "already-written tokens where the gold does not repeat them, against greedy loops [0].")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="EPS",
              help="Label smoothing of the training loss (Szegedy et al., 2016): each scored token's target puts "
                   "1 - EPS on the gold token and EPS spread over the vocabulary; validation loss stays plain "
                   "[0; scratch flan-t5-small 0.1].")
@click.option("--quote-mix", type=click.IntRange(0), default=None, metavar="K",
              help="Mix K quoting examples per training excerpt into fine-tuning: a run of its words asked for "
                   "by its first and last two words, answered as the location [0].")
@click.option("--quote-shuffle/--no-quote-shuffle", default=None,
              help="With --quote-mix: each quoting example's excerpt has its words in a random order, so the "
                   "quote can only be copied, not recalled [off].")
@click.option("--tie-embeddings/--no-tie-embeddings", default=None,
              help="Scratch T5: tie the output layer to the input embedding (T5 v1.0's way), so every token the "
                   "encoder reads has a trained output vector; FLAN-T5 is published untied [off].")
@click.option("--copy-head", type=click.Choice(["off", "pointer", "span"]), default=None,
              help="Scratch models: a copy head that can draw each output token from the excerpt (T5's input, "
                   "the excerpt in GPT-2's prompt): pointer, by attention (See et al., 2017); span, also by continuing "
                   "the text after the place matching the last tokens written [pretrained: off; scratch: span]; "
                   "off also drops the head's scope and vocabulary loss defaults.")
@click.option("--copy-scope", type=click.Choice(["everywhere", "location"]), default=None,
              help="With a copy head: copy into every output token, or only inside the location field (the "
                   "gadget type and explanation then come from the vocabulary alone) [seq2seq: everywhere; causal: "
                   "location].")
@click.option("--copy-vocab-loss", type=click.FloatRange(0), default=None, metavar="W",
              help="With a copy head: add W times the vocabulary distribution's own cross-entropy where the head "
                   "may copy, so the model still learns to write those tokens itself [seq2seq: 0; causal: 1].")
@click.option("--open-copies/--no-open-copies", default=None,
              help="Also train on an open-instruction copy of every example whose instruction names its label "
                   "[pretrained: no; scratch: yes].")
@click.option("--average-epochs", type=click.IntRange(0), default=None, metavar="K",
              help="Checkpoint averaging: the mean of the weights at the ends of the last K epochs (2 to --epochs) "
                   "is kept if it scores at least as well on the development slice as the best epoch (always "
                   "without a slice); `wmg show` says which was kept [0: off].")
@click.option("--dev-fraction", type=click.FloatRange(0, 0.5, max_open=True), default=None,
              help="Hold out this share of the training split and keep the epoch with the best gold-type accuracy "
                   "on it (0: keep the last epoch) [0; scratch 0.1].")
@click.option("--tapt-epochs", type=click.IntRange(0), default=None,
              help="Task-adaptive pretraining on the training excerpts before fine-tuning: span corruption (T5), "
                   "causal LM (GPT-2) [0; scratch: see README].")
@click.option("--optimizer", type=click.Choice(["adamw", "adamw-scale"]), default=None,
              help="adamw, or adamw-scale: each step scaled by the weight's root-mean-square, as Adafactor and "
                   "nanoT5 do for T5 [adamw; scratch T5: adamw-scale].")
@click.option("--tapt-denoise/--no-tapt-denoise", default=None,
              help="Pretraining includes span corruption (T5) / causal LM (GPT-2) [yes].")
@click.option("--tapt-quotes", type=click.IntRange(0), default=None,
              help="Quoting examples (a random span of the excerpt, as `location: ...`) per excerpt and pretraining "
                   "epoch [0; scratch: see README].")
@click.option("--log-every", type=click.IntRange(0), default=None,
              help="Print the loss every N optimizer steps (0: only at epoch ends) [10].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CPUs with AMX/AVX512-BF16, else fp32.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cpu", show_default=True,
              help="CPU by default: CUDA and MPS are hidden unless asked for here.")
@click.option("--platform", type=click.Choice(["auto", "unix", "windows"]), default="auto", show_default=True,
              help="unix: worker processes for data loading; windows: none.")
@click.option("--checkpoints", default="checkpoints", show_default=True, type=click.Path(file_okay=False),
              metavar="DIR", help="Where checkpoints/<run>/<model>/final_model are saved.")
@click.option("--scratch-vocab", type=click.IntRange(300), default=None,
              help="Vocabulary size of tokenizers trained for scratch init [4000 for both the Unigram (T5) and the BPE (GPT-2) tokenizer].")
@click.option("--tiny", is_flag=True, help="Tiny 2-layer, width-64 architectures (scratch): for tests and smoke runs.")
@click.option("--compare/--no-compare", default=True, show_default=True, help="Run the comparison after training.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the reference baselines (TF-IDF + logistic regression, majority class) fitted on "
                   "the training split.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1),
              help="Generation limit in the comparison.")
@NO_REPEAT
@LOCATION_SPAN
@click.option("--report", default="ensemble_report.json", show_default=True, type=click.Path(dir_okay=False),
              metavar="PATH", help="Where the comparison writes its JSON report.")
@click.option("--show-examples/--no-show-examples", default=True, show_default=True,
              help="Print the agreement block of every validation example.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress: a bar on a terminal, a plain line every 30 s otherwise.")
@click.option("--folds", type=click.IntRange(2), default=None, metavar="K",
              help="Cross-validation: K runs, each holding out one fold of a partition stratified by label and "
                   "instruction form (every example evaluated once), tied by a new study id.")
@click.option("--fold", type=click.IntRange(1), default=None, metavar="I",
              help="With --folds (or --study): make only fold I (1 to K), e.g. one fold per process or machine.")
@click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              metavar="F", help="Learning curves: train on this share of the training split (stratified by label "
                                "and form; a smaller share is a subset of a larger one); the held-out examples "
                                "are unchanged.")
@click.option("--extra-train", "extra_train", multiple=True, type=click.Path(exists=True, dir_okay=False),
              metavar="FILE", help="Also train on every line of this JSONL file (repeatable): added to the training "
                                   "split after the split is made, never evaluated; the held-out examples are "
                                   "unchanged, so a data lever is measured on the same folds.")
@click.option("--seeds", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="With --folds: repeat the K folds with N seeds (--seed, --seed+1, ...), each a new partition.")
@click.option("--record-only", is_flag=True, default=False,
              help="With --folds: record the study and print its id, making no run; `wmg work --study ID` "
                   "processes (on any machines sharing the store) make its runs.")
@click.option("--study", "study", type=STUDY_ID, default=None,
              help="Continue a study with its own options: make (or resume) the runs it still lacks.")
@click.option("--resume", "resume", type=RUN_ID, default=None,
              help="Continue an interrupted run from its last checkpoint, with its own data split and options "
                   "(only the comparison and display options may be given with it; those not given are the "
                   "run's own, as its start gave them).")
@db_option
@output_options(("comparison", "run", "study", "study_pairs"))
@handle_errors
@torchrun_aware
def train(data_sha256, data, models, examples, eval_split, seed, init, weights, epochs, dropout, learning_rate, batch_size, grad_accum,
          warmup_ratio, schedule, weight_decay, max_grad_norm, max_input_length, max_target_length,
          max_causal_length, causal_loss, prompt_loss_weight, type_loss_weight, location_loss_weight, unlikelihood, label_smoothing, quote_mix, quote_shuffle, tie_embeddings, copy_head, copy_scope, copy_vocab_loss, open_copies, dev_fraction, average_epochs, tapt_epochs, tapt_denoise, tapt_quotes, optimizer, log_every, precision, device, platform, checkpoints, scratch_vocab, tiny, compare,
          baseline, max_new_tokens, no_repeat, location_span, report, show_examples, progress, folds, fold, train_fraction, extra_train, seeds,
          record_only, study, resume, store, output):
    """Train every model on one split of the data, then compare them.

    Prints the new run's id; every step, loss and prediction goes to the results store.
    A checkpoint is written every epoch and on Ctrl-C / SIGTERM; `--resume RUN_ID` continues from it.
    With --format json|csv the comparison's result (one record per model) is the only thing on stdout.

    --folds K makes a study: K runs of this configuration, fold I held out by run I, then the
    study's pooled analysis (`wmg analyze models --study ID` shows it again).
    """
    from . import device as dev
    from .config import resolve_models
    from .pipeline import (COMPARE_OPTIONS, CompareOptions, TrainOptions, compare_run, hash_extra_training, resume_run,
                           start_study, train_run)

    ctx = click.get_current_context()

    def refuse_options(what: str, allowed: set[str]) -> None:
        allowed = allowed | {"store", "progress", "fmt", "table", "out", "quiet", "as_json"}
        given = [name for name in ctx.params if name not in allowed and _given(ctx, name)]
        if given:
            raise click.UsageError(f"{what} with its own options; do not give --{given[0].replace('_', '-')}")

    if record_only and folds is None:
        raise click.UsageError("--record-only needs --folds K")
    for flag, given_flag in (("--tie-embeddings", tie_embeddings), ("--copy-head", copy_head not in (None, "off"))):
        if given_flag and init == "pretrained":
            raise click.UsageError(f"{flag} changes the architecture: it applies to scratch init only")
    if (fold is not None or seeds > 1) and folds is None and study is None:
        raise click.UsageError(f"--{'fold' if fold is not None else 'seeds'} needs --folds K (or --study ID)")
    comparing = {name: ctx.params[name] for name in COMPARE_OPTIONS}  # this command's comparison options
    if study is not None:
        refuse_options("--study continues a study", {"study", "fold", "show_examples"})

        st = store.get_study(study)
        tr = st.config["train"]
        dev.setup(tr["device"], tr["platform"], echo, precision=tr["precision"])
        _run_study(store, study, fold, output, show_examples, progress)
        return
    if resume is not None:
        refuse_options("--resume continues a run", {"resume", "compare", "baseline", "max_new_tokens", "no_repeat",
                                                    "location_span", "report", "show_examples"})

        run = store.get_run(resume)
        info = dev.setup(run.device, run.platform, echo, precision=run.config["precision"])
        recorded = run.config.get("compare")  # the comparison's options as the run was started
        if recorded is None and run.study_id is not None:
            recorded = store.get_study(run.study_id).config.get("compare")
        if recorded is None:
            echo(f"! Run {resume} kept no comparison options (recorded before wmg kept them): it is compared "
                 "with the options given here and wmg's defaults for the others")
        else:  # an option given now wins; the others are the run's own
            taken = {name: recorded[key] for name, key in COMPARE_OPTIONS.items()
                     if key in recorded and not _given(ctx, name)}
            comparing.update(taken)
            if taken:
                echo(f"✓ Comparison options as run {resume} was started: "
                     + ", ".join(f"{COMPARE_OPTIONS[n]}={v}" for n, v in taken.items()))
        resume_run(store, resume, echo, progress)
        run_id, prec, device = resume, info.precision, run.device
    else:
        names = [s.name for s in resolve_models(models)]  # fail fast on an unknown name, before the banner
        sources = {}
        for item in weights:
            name, sep, path = item.partition("=")
            if not sep or name not in names:
                raise click.BadParameter(f"{item!r}: expected MODEL=PATH with MODEL one of {','.join(names)}",
                                         param_hint="--weights")
            if not Path(path).is_dir():
                raise click.BadParameter(f"{item!r}: {path} is not a folder", param_hint="--weights")
            sources[name] = path
        data = resolve_data(data)
        if data_sha256 is not None:
            from .pipeline import file_sha256

            actual = file_sha256(data)
            if actual != data_sha256.lower():
                raise click.ClickException(f"{data} is not the data the config was written for: its SHA-256 is "
                                           f"{actual}, not {data_sha256}")
        info = dev.setup(device, platform, echo, precision=precision)
        prec = info.precision
        overrides = dict(epochs=epochs, learning_rate=learning_rate, micro_batch_size=batch_size, grad_accum=grad_accum,
                         warmup_ratio=warmup_ratio, schedule=schedule, weight_decay=weight_decay,
                         max_grad_norm=max_grad_norm, max_input_length=max_input_length,
                         max_target_length=max_target_length, max_causal_length=max_causal_length, causal_loss=causal_loss,
                         prompt_loss_weight=prompt_loss_weight,
                         log_every=log_every, dropout=dropout, type_loss_weight=type_loss_weight,
                         location_loss_weight=location_loss_weight, unlikelihood=unlikelihood,
                         label_smoothing=label_smoothing, quote_mix=quote_mix,
                         quote_shuffle=quote_shuffle,
                         tie_embeddings=tie_embeddings, copy_head=copy_head, copy_scope=copy_scope, copy_vocab_loss=copy_vocab_loss,
                         open_copies=open_copies, dev_fraction=dev_fraction, average_epochs=average_epochs,
                         tapt_epochs=tapt_epochs,
                         tapt_denoise=tapt_denoise, tapt_quotes=tapt_quotes, optimizer=optimizer)
        opts = TrainOptions(data=data, models=models, examples=examples, eval_split=eval_split, seed=seed, init=init,
                            device=device, platform=info.platform, workers=info.workers, precision=prec,
                            checkpoints=checkpoints, tiny=tiny, scratch_vocab=scratch_vocab, sources=sources,
                            overrides={k: v for k, v in overrides.items() if v is not None}, progress=progress,
                            train_fraction=train_fraction, extra_train=list(extra_train))
        hash_extra_training(opts)
        if folds is not None:
            if _given(ctx, "eval_split"):
                raise click.UsageError("--eval-split does not apply with --folds: run i holds out fold i (1/K of "
                                       "the examples)")
            if fold is not None and fold > folds:
                raise click.BadParameter(f"{fold} is not between 1 and {folds}", param_hint="--fold")
            if fold is not None and record_only:
                raise click.UsageError("--record-only makes no run; give --fold to `wmg work` instead")
            if not compare:
                raise click.UsageError("--folds makes a study, which compares every fold; drop --no-compare")
            opts.folds = folds
            sid = start_study(store, opts, folds, [seed + i for i in range(seeds)], {
                "max_new_tokens": max_new_tokens, "precision": prec, "device": device, "no_repeat_ngram_size": no_repeat,
                "location_span": location_span, "report": report, "baseline": baseline})
            echo(f"✓ Study {sid}: {folds} folds x {seeds} seed{'s' if seeds > 1 else ''} "
                 f"({', '.join(str(seed + i) for i in range(seeds))}) recorded in the results store")
            if record_only:
                echo(f"Study id: {sid}  (make its runs with `wmg work --study {sid}`, in as many processes "
                     "and machines as share this store)")
                if output.machine or output.out:
                    from .console import Table

                    output.emit([Table("study", "Study", ["study_id"], [[sid]])])
                return
            _run_study(store, sid, fold, output, show_examples and _given(ctx, "show_examples"), progress)
            return
        opts.compare = {COMPARE_OPTIONS[name]: value for name, value in comparing.items()}
        run_id = train_run(store, opts, echo)
    echo("")
    echo(f"Run id: {run_id}")
    if comparing["compare"]:
        comparison = compare_run(store, CompareOptions(
            run_id=run_id, max_new_tokens=comparing["max_new_tokens"], precision=prec, device=device,
            no_repeat_ngram_size=comparing["no_repeat"], location_span=comparing["location_span"],
            report=comparing["report"], progress=progress, baseline=comparing["baseline"]), echo)
        show_comparison(comparison, output, show_examples)
        echo(f"Run id: {run_id}")
    elif output.machine or output.out:
        from .console import Table

        output.emit([Table("run", "Run", ["run_id"], [[run_id]])])


def _shown(show_examples: bool):
    """What a study prints after each comparison."""
    from .console import show_example, show_summary

    def shown(comparison):
        if show_examples:
            for i, r in enumerate(comparison.results):
                show_example(echo, i, len(comparison.results), r, comparison.names)
        show_summary(echo, comparison.summary, comparison.report_path)
    return shown


def _study_summary(store, study, output: Output) -> None:
    """How far the study is, and its pooled analysis."""
    from .analysis import select
    from .analysis.questions import models as models_analysis

    done = [r for r in study.runs if r.compared]
    echo("")
    echo(f"Study {study.id}: {len(done)} of {study.folds * len(study.seeds)} runs trained and compared "
         f"(runs {', '.join(str(r.id) for r in study.runs) or 'none'})")
    output.emit([t for t in models_analysis(store, select(store, study_ids=[study.id])) if t.name.startswith("study")])
    echo(f"Study id: {study.id}  (`wmg analyze models --study {study.id}` shows this again, with every fold)")


def _run_study(store, study_id: int, fold: int | None, output: Output, show_examples: bool, progress: bool) -> None:
    """Make the study's missing runs, each compared as it finishes, then print the pooled analysis."""
    from .pipeline import run_study

    try:
        study = run_study(store, study_id, echo, progress, fold, _shown(show_examples))
    except RunInterrupted as exc:
        raise RunInterrupted(f"{exc} (or continue the whole study with `wmg train --study {study_id}`)",
                             exc.signal_name) from None
    _study_summary(store, study, output)


@main.command(short_help="Make a study's runs together with other workers sharing the store.")
@click.option("--study", "study_id", type=STUDY_ID, required=True, help="The study (made by `wmg train --folds K`).")
@click.option("--fold", type=click.IntRange(1), default=None, metavar="I", help="Only fold I (1 to K).")
@click.option("--lease-seconds", type=click.FloatRange(1), default=120.0, show_default=True, metavar="S",
              help="How long a run stays this worker's without a renewal (renewed every S/3); a dead worker's "
                   "runs are taken over by another worker S seconds after its last renewal.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=None, metavar="S",
              help="While every unfinished run is held by another worker, look again this often "
                   "[default: a quarter of --lease-seconds].")
@click.option("--show-examples/--no-show-examples", default=False, show_default=True,
              help="Print every compared example.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress: a bar on a terminal, a plain line every 30 s otherwise.")
@db_option
@output_options(("study", "study_pairs"))
@handle_errors
def work(study_id, fold, lease_seconds, poll_seconds, show_examples, progress, store, output):
    """Claim and make a study's runs until none is left, beside any number of other
    `wmg work` processes on machines sharing the store (PostgreSQL, or a SQLite file on one
    machine). Each run is claimed once, under a lease renewed while it trains; a worker that
    dies loses its lease and another takes its run over and resumes it, so keep --checkpoints
    on a folder every worker can read. Exits when every run is trained and compared, then
    prints the study's pooled analysis.
    """
    from . import device as dev
    from .work import work_study

    st = store.get_study(study_id)
    tr = st.config["train"]
    dev.setup(tr["device"], tr["platform"], echo, precision=tr["precision"])
    try:
        done = work_study(store, study_id, echo, progress, lease_seconds, poll_seconds, fold, _shown(show_examples))
    except RunInterrupted as exc:
        raise RunInterrupted(f"{exc} (or let any `wmg work --study {study_id}` take it over)",
                             exc.signal_name) from None
    echo(f"✓ This worker made run(s) {', '.join(map(str, done.made)) or 'none'}"
         + (f"; took over {', '.join(map(str, done.taken_over))}" if done.taken_over else ""))
    _study_summary(store, done.study, output)


# ---------------------------------------------------------------- compare / predict
def _compare_options(f):
    for opt in reversed([
        click.option("--run-id", type=RUN_ID, required=True, help="The run whose models to compare."),
        click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1),
                     help="Most tokens each model may generate per example."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
                     help="Prompts generated together (batched greedy decoding)."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="fp32", show_default=True,
                     help="Generation precision (fp32 gives the exact greedy outputs)."),
        click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cpu", show_default=True,
                     help="CPU by default: CUDA and MPS are hidden unless asked for here."),
        NO_REPEAT,
        LOCATION_SPAN,
    ]):
        f = opt(f)
    return f


@main.command(short_help="Let every model of a run predict, store the comparison.")
@_compare_options
@click.option("--data", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="Compare on every line of another dataset file instead of the run's validation split.")
@click.option("--report", default="ensemble_report.json", show_default=True, type=click.Path(dir_okay=False),
              metavar="PATH", help="Where to write the JSON report.")
@click.option("--show-examples/--no-show-examples", default=True, show_default=True,
              help="Print the agreement block of every example.")
@click.option("--judge", "judges", multiple=True, type=click.Choice(["rules", "embedding", "llm"]),
              help="Also judge semantic agreement and put the verdicts in the report (repeatable; see `wmg judge`).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the reference baselines (TF-IDF + logistic regression, majority class) fitted on "
                   "the run's training split.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress: a bar on a terminal, a plain line every 30 s otherwise.")
@db_option
@output_options(("comparison",))
@handle_errors
def compare(run_id, max_new_tokens, batch_size, precision, device, no_repeat, location_span, data, report,
            show_examples, judges, baseline, progress, store, output):
    """Every model of a run predicts on its validation split (or --data); predictions, format checks and
    agreement are stored as a new evaluation."""
    from . import device as dev
    from .pipeline import CompareOptions, compare_run

    store.get_run(run_id)  # an unknown id fails before any banner
    if data and not Path(data).is_file():
        raise DataError(f"{data}: data file not found")
    info = dev.setup(device, "auto", echo, precision=precision, workers=False)
    comparison = compare_run(store, CompareOptions(run_id=run_id, data=data, max_new_tokens=max_new_tokens,
                                                no_repeat_ngram_size=no_repeat, location_span=location_span,
                                                batch_size=batch_size,
                                                precision=info.precision, device=device, report=report,
                                                progress=progress, baseline=baseline), echo)
    show_comparison(comparison, output, show_examples)
    if judges:
        _judge_into_report(store, comparison.evaluation_id, judges, report, progress)


def _judge_into_report(store, eid, judges, report, progress):
    from .judges.verdicts import add_to_report, judge_evaluation, summary

    set_ids = {}
    echo("")
    echo("SEMANTIC AGREEMENT:")
    string = query_string_rate(store, eid)
    echo(f"  string agreement (normalized types equal): {string:.1%}")
    for name in judges:
        try:
            set_ids[name], rows = judge_evaluation(store, eid, name, progress=progress)
        except JudgeError as exc:
            raise ConfigError(f"{name} judge: {exc}") from None
        s = summary(rows)
        echo(f"  {name} judge: full {s['full_rate']:.1%}, full or partial {s['full_or_partial_rate']:.1%} "
             f"(judgment set {set_ids[name]})")
    if report:
        add_to_report(report, store, set_ids)


@main.command(short_help="Every model of a run on one custom excerpt.")
@_compare_options
@click.option("--instruction", default="Identify any weird machine gadget in the excerpt. Report gadget_type, "
                                       "location and explanation.", show_default=True, help="The task text.")
@click.option("--excerpt", required=True, help="The manual excerpt to analyse.")
@db_option
@output_options(("predictions",), json_alias=True)
@handle_errors
def predict(run_id, max_new_tokens, batch_size, precision, device, no_repeat, location_span, instruction, excerpt, store,
            output):
    """Every model of a trained run on one custom excerpt (nothing is stored)."""
    from . import device as dev
    from .console import prediction_tables, show_prediction
    from .pipeline import CompareOptions, predict as do_predict

    if not excerpt.strip():
        raise click.BadParameter("is empty", param_hint="--excerpt")
    store.get_run(run_id)
    info = dev.setup(device, "auto", echo, precision=precision, workers=False)
    result = do_predict(store, run_id, instruction, excerpt,
                        CompareOptions(run_id=run_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       no_repeat_ngram_size=no_repeat, location_span=location_span,
                                       precision=info.precision, device=device,
                                       report=None), echo)
    if output.machine or output.out:
        output.emit(prediction_tables(result))
    else:
        show_prediction(click.echo, result)


# ---------------------------------------------------------------- runs / show
@main.command(short_help="Every run, each model's losses and scores.")
@db_option
@output_options(("runs",))
@handle_errors
def runs(store, output):
    """Every run: status, and per model its init, losses and latest comparison scores."""
    from .console import runs_table
    from .interrupt import process_alive

    for run_id in store.reap_dead_runs(process_alive):
        warn(f"run {run_id}: its process is gone (killed or crashed); marked interrupted, "
             f"resume with `wmg train --resume {run_id}`")
    t = runs_table(store.list_runs())
    if not t.rows and not output.machine:
        t.notes.append("no runs yet: start one with `wmg train`")
    output.emit([t])


@main.command(short_help="One run in detail.")
@click.option("--run-id", type=RUN_ID, required=True, help="The run to show.")
@db_option
@output_options(("run", "models", "config"), extra_formats=("toml",))
@handle_errors
def show(run_id, store, output):
    """One run in detail: data, versions, each model's init, hyperparameters, losses and scores.

    --format toml prints instead a config file that trains the run again: `wmg show --run-id N
    --format toml > run.toml`, then `wmg train --config run.toml` (same data, checked by its
    SHA-256, split, seed and hyperparameters)."""
    from .console import show_tables

    run = store.get_run(run_id)
    if output.fmt == "toml":
        from .runconfig import run_config

        if output.table is not None:
            raise click.UsageError("--format toml prints the run's config; it has no --table")
        text = run_config(run, store.get_study(run.study_id) if run.study_id else None)
        if output.out:
            Path(output.out).mkdir(parents=True, exist_ok=True)
            (Path(output.out) / f"run-{run_id}.toml").write_text(text)
        else:
            click.echo(text, nl=False)
        return
    output.emit(show_tables(run))


# ---------------------------------------------------------------- db
@main.group(short_help="The results store's schema (Alembic migrations).")
def db():
    """The results store's schema (Alembic migrations)."""


def _revision_table(store, rev):
    from .console import Table

    return [Table("schema", "Schema", ["revision", "head"], [[rev, store.head()]])]


@db.command("upgrade")
@db_option
@output_options(("schema",), quiet=False)
@handle_errors
def db_upgrade(store, output):
    """Create the schema or upgrade it to the newest revision."""
    store.engine()  # upgrades on first use
    output.emit(_revision_table(store, store.revision()))


@db.command("current")
@db_option
@output_options(("schema",), quiet=False)
@handle_errors
def db_current(store, output):
    """The schema revision of the store (none if it was never initialised) and this wmg's newest."""
    output.emit(_revision_table(store, store.revision() or "none"))


# ---------------------------------------------------------------- analyze / plot
def _selection_options(f):
    for opt in reversed([
        click.option("--run-id", "run_ids", type=RUN_ID, multiple=True,
                     help="A run to analyse (its latest comparison); repeatable."),
        click.option("--evaluation-id", "evaluation_ids", type=EVALUATION_ID, multiple=True,
                     help="A specific comparison to analyse instead of a run's latest; repeatable."),
        click.option("--study", "study_ids", type=STUDY_ID, multiple=True,
                     help="Every run of a study (`wmg train --folds K`), its folds pooled; repeatable."),
        click.option("--all-runs", is_flag=True, help="Every run with a completed comparison (none: an empty result)."),
    ]):
        f = opt(f)
    return f


def _select(store, run_ids, all_runs, evaluation_ids, study_ids=(), source=None):
    from .analysis import select

    if not (run_ids or all_runs or evaluation_ids or study_ids):
        raise click.UsageError("nothing selected: give --run-id N (repeatable), --evaluation-id N, --study ID "
                               "or --all-runs")
    if source is not None and not study_ids:
        raise click.UsageError("--source needs --study ID (a single comparison on a file is --evaluation-id N)")
    return select(store, run_ids, all_runs, evaluation_ids, study_ids, source or "validation")


@main.group(short_help="Research analyses over the results store.")
def analyze():
    """Research analyses over the results store (reads only the database; loads no model).

    Each analysis is also a SQL view in results.db (see the README's "Querying results.db").
    """


SOURCE_OPTION = click.option(
    "--source", default=None, metavar="FILE",
    help="With --study: each fold's models as compared on every line of FILE (`wmg compare --run-id N --data FILE`, "
         "FILE as given there) instead of on their held-out folds; the folds are then replicates over the same "
         "lines, and the pooled figures average them per line.")


def _analysis_command(name: str, tables: tuple[str, ...], short: str, doc: str):
    def command(run_ids, evaluation_ids, study_ids, all_runs, store, output, source=None):
        from .analysis.questions import QUESTIONS

        output.emit(QUESTIONS[name](store, _select(store, run_ids, all_runs, evaluation_ids, study_ids, source)))

    f = _selection_options(db_option(output_options(tables, quiet=False)(handle_errors(command))))
    if name == "models":  # the only analysis whose pooled tables know that folds can share their examples
        f = SOURCE_OPTION(f)
    return analyze.command(name, help=doc, short_help=short)(f)


for _name, _tables, _short, _doc in [
    ("disagreements", ("disagreements", "length", "by_form"), "Where the models disagree, and why.",
     "Examples where the models disagree, side by side with the gold type; whether disagreement "
     "correlates with excerpt length (point-biserial and Spearman, with p) and with the "
     "instruction form (category vs open, Fisher's exact test)."),
    ("models", ("models", "pairs", "by_form", "study", "study_pairs"), "Architecture comparison, paired tests, by form.",
     "Architecture comparison: per model format and gold-type accuracy with 95% Wilson intervals, ROUGE-1/ROUGE-L "
     "F1, final loss, training seconds, parameters and init; for every pair of models on the same examples the "
     "difference in gold-type accuracy with a bootstrap interval and McNemar's exact test; gold-type accuracy "
     "per instruction form."),
    ("confidence", ("confidence", "risk_coverage", "aurc"), "Agreement as confidence; risk-coverage, AURC.",
     "Agreement as confidence: accuracy where all models agree vs where they do not; the "
     "risk-coverage curve ordered by agreement and its area (AURC)."),
    ("by-type", ("by_type", "confusion"), "Accuracy per gadget type; confusion matrices.",
     "Error analysis by gadget type: per gold label, each model's accuracy and the disagreement rate; "
     "the confusion matrix of gold against predicted canonical label."),
    ("vote", ("vote",), "Majority vote against each model.",
     "Majority voting: the vote's accuracy against each model's own, with the tie rule stated."),
    ("agreement", ("pairwise", "all_models", "semantic"), "Cohen's and Fleiss' kappa; semantic agreement.",
     "Cohen's kappa for every pair of models and Fleiss' kappa for all of them, on normalized "
     "types, next to the full and observed agreement rates; each judge's semantic agreement."),
]:
    _analysis_command(_name, _tables, _short, _doc)


@analyze.command("runs", short_help="How results move with the configuration.")
@click.option("--run-id", "run_ids", type=RUN_ID, multiple=True, help="Only these runs (default: every run).")
@click.option("--all-runs", is_flag=True, help="Every run (the default).")
@db_option
@output_options(("runs",), quiet=False)
@handle_errors
def analyze_runs(run_ids, all_runs, store, output):
    """One row per run and model: the configuration that differs between runs (examples, epochs, learning
    rate, models, init, seed), the agreement rate, and each model's format and gold-type accuracy."""
    from .analysis import AnalysisError
    from .analysis.questions import runs as runs_table

    known = {r["id"] for r in store.query("SELECT id FROM runs")}
    for rid in run_ids:
        if rid not in known:
            raise AnalysisError(f"no run with id {rid}")
    output.emit(runs_table(store, list(run_ids) or None))


@main.command(short_help="PNG figures of runs and comparisons.")
@click.option("--run-id", "run_ids", type=RUN_ID, multiple=True, help="A run to plot (its latest comparison); repeatable.")
@click.option("--evaluation-id", "evaluation_ids", type=EVALUATION_ID, multiple=True,
              help="A specific comparison to plot.")
@click.option("--study", "study_ids", type=STUDY_ID, multiple=True,
              help="Every run of a study, and the study's pooled accuracy per instruction form.")
@click.option("--all-runs", is_flag=True, help="Every run with a completed comparison.")
@click.option("--out", default="plots", show_default=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for the PNG files.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="How to list the files written: table, json or csv.")
@db_option
@handle_errors
def plot(run_ids, evaluation_ids, study_ids, all_runs, out, fmt, store):
    """PNG figures: training loss curves of every model, per-label accuracy bars, the confusion matrix of
    each model, and across runs the agreement and accuracy trend."""
    from .analysis.plots import plot_all
    from .console import Table, emit

    sel = _select(store, run_ids, all_runs, evaluation_ids, study_ids)
    paths = plot_all(store, sel, out) if sel else []
    emit([Table("files", "Figures written", ["path"], [[str(p)] for p in paths])], fmt, echo=click.echo, warn=warn)


# ---------------------------------------------------------------- judge / annotate
def _evaluation_of(store, run_id, evaluation_id) -> int:
    from .analysis import select

    if evaluation_id is None and run_id is None:
        raise click.UsageError("give --run-id N (its latest comparison) or --evaluation-id N")
    return select(store, [run_id] if run_id and not evaluation_id else [],
                  evaluation_ids=[evaluation_id] if evaluation_id else [])[0].evaluation_id


def _llm_options(f):
    for opt in reversed([
        click.option("--judge-model", envvar="WMG_JUDGE_MODEL", default=None,
                     help="llm judge: the model name [env WMG_JUDGE_MODEL]."),
        click.option("--api", type=click.Choice(["openai", "anthropic"]), default="openai", show_default=True,
                     help="llm judge: OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp) or "
                          "the Anthropic messages API."),
        click.option("--base-url", default=None,
                     help="llm judge: server URL [env OPENAI_BASE_URL or ANTHROPIC_BASE_URL]."),
        click.option("--api-key", default=None,
                     help="llm judge: API key [env OPENAI_API_KEY or ANTHROPIC_API_KEY]; never stored or printed."),
        click.option("--timeout", type=float, default=60.0, show_default=True, help="llm judge: seconds per request."),
        click.option("--retries", type=click.IntRange(1), default=3, show_default=True,
                     help="llm judge: attempts per request (timeouts, 429 and 5xx are retried with backoff)."),
    ]):
        f = opt(f)
    return f


@main.command(short_help="Semantic agreement by judges (rules, embedding, llm).")
@click.option("--run-id", type=RUN_ID, default=None, help="Judge this run's latest comparison.")
@click.option("--evaluation-id", type=EVALUATION_ID, default=None, help="Judge this comparison instead.")
@click.option("--judge", "judges", multiple=True, type=click.Choice(["rules", "embedding", "llm"]),
              help="Which judge (repeatable): rules (offline lexicon), embedding (offline all-MiniLM-L6-v2), "
                   "llm (a reasoning model over HTTP).")
@click.option("--replace", is_flag=True,
              help="Delete this judge's earlier verdicts on the comparison first (otherwise a new set is added).")
@click.option("--compare-to", type=click.Choice(["manual"]), default=None,
              help="Instead of judging: how well each judge matches the manual labels (accuracy, kappa, confusion).")
@_llm_options
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress: a bar on a terminal, a plain line every 30 s otherwise.")
@db_option
@output_options(("semantic", "judges", "confusion"))
@handle_errors
def judge(run_id, evaluation_id, judges, replace, compare_to, judge_model, api, base_url, api_key, timeout,
          retries, progress, store, output):
    """Semantic agreement: a judge gives every example of a comparison a verdict (full, partial,
    disagreement, invalid) with an explanation and a confidence, between the models (every pair and
    overall) and for each model against the gold output. Verdicts of several judges live side by side."""
    from .console import Table
    from .judges.base import VERDICTS
    from .judges.verdicts import compare_to_manual, judge_evaluation, summary

    eid = _evaluation_of(store, run_id, evaluation_id)
    if compare_to:
        output.emit(compare_to_manual(store, eid, judges))
        return
    if not judges:
        raise click.UsageError("give --judge rules|embedding|llm (or --compare-to manual)")
    rows = []
    string = query_string_rate(store, eid)
    for name in judges:
        try:
            set_id, verdicts = judge_evaluation(store, eid, name, replace=replace, progress=progress,
                                                api=api, base_url=base_url, model=judge_model, api_key=api_key,
                                                timeout=timeout, retries=retries)
        except JudgeError as exc:
            raise ConfigError(f"{name} judge: {exc}") from None
        s = summary(verdicts)
        rows.append([eid, name, set_id, s["examples"], string, s["full_rate"], s["full_or_partial_rate"]]
                    + [s["counts"][k] for k in VERDICTS + ("error",)])
    output.emit([Table("semantic", "Semantic agreement", ["evaluation_id", "judge", "judgment_set", "examples",
                                                          "string_agreement", "full_rate", "full_or_partial_rate",
                                                          *VERDICTS, "error"],
                       rows, ["string_agreement: every model gave the same non-empty normalized type"])])


def query_string_rate(store, eid) -> float:

    return store.get_evaluation(eid).full_agreement_rate or 0.0


@main.command(short_help="Label the models' outputs by hand.")
@click.option("--run-id", type=RUN_ID, default=None, help="Annotate this run's latest comparison.")
@click.option("--evaluation-id", type=EVALUATION_ID, default=None, help="Annotate this comparison instead.")
@click.option("--annotator", default=lambda: __import__("getpass").getuser(), show_default="your user name",
              help="Who is labelling (stored with each label).")
@click.option("--all-examples", is_flag=True, help="Also show examples where the models agree.")
@click.option("--import", "import_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Import labels from a CSV (label and example_id or position; annotator and note optional).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Export every label of the comparison to a CSV.")
@db_option
@handle_errors
def annotate(run_id, evaluation_id, annotator, all_examples, import_path, export_path, store):
    """Label the models' outputs by hand: each disagreement is shown (instruction, excerpt, gold,
    each model's output) and gets full / partial / disagreement / invalid and an optional note.
    Labels are stored as they are given, so a session resumes where it stopped."""
    from .judges.verdicts import annotate_session, export_csv, import_csv

    eid = _evaluation_of(store, run_id, evaluation_id)
    try:
        if import_path:
            click.echo(f"imported {import_csv(store, eid, import_path, annotator)} labels into evaluation {eid}")
        if export_path:
            click.echo(f"exported {export_csv(store, eid, export_path)} labels to {export_path}")
        if import_path or export_path:
            return
        done, left = annotate_session(store, eid, annotator, lambda q: click.prompt(q, default="", show_default=False),
                                      click.echo, include_agreements=all_examples)
    except JudgeError as exc:
        raise ConfigError(str(exc)) from None
    except click.Abort:
        click.echo("")
        done, left = 0, None
    click.echo(f"labelled {done} example(s) as {annotator}"
               + (f"; {left} left (run the same command to resume)" if left else ""))


# ---------------------------------------------------------------- bench
@main.command(short_help="Speed against the tutorial's way, on this machine.")
@click.option("--models", default=",".join(DEFAULT_MODELS), show_default=True, metavar="NAMES",
              help="Models to measure.")
@click.option("--quick", is_flag=True, help="A short version (4 optimizer steps, 4 generations, a tiny memory run).")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory run of `wmg train`.")
@click.option("--data", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="Examples to train and generate on [default: the bundled dataset].")
@output_options(("results", "machine", "differences"), json_alias=True)
@handle_errors
def bench(models, quick, no_memory, data, output):
    """Speed against the tutorial's way, side by side on this machine.

    The toolkit against HF Trainer with batch 1, padding to max length and fp32, and generation one
    example at a time: examples/s and tokens/s, final loss after the same steps, identical greedy
    outputs, training MFU and peak memory. Needs `wmg[bench]`."""
    from . import bench as b
    from .config import resolve_models

    names = [s.name for s in resolve_models(models)]
    data = resolve_data(data)
    res = b.run(names, quick, data=data, memory=not no_memory, echo=echo)
    if output.machine or output.out:
        output.emit(b.tables(res))
    else:
        click.echo(b.render(res))


# ---------------------------------------------------------------- data
@main.command(short_help="One self-contained HTML page of a run or a study.")
@click.option("--run-id", type=RUN_ID, default=None, help="The run to report (its latest comparison).")
@click.option("--study", "study_id", type=STUDY_ID, default=None, help="The study to report, its folds pooled.")
@click.option("--out", "out_path", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="The HTML file to write.")
@db_option
@output_options(("files",), quiet=False, out_option=False)
@handle_errors
def report(run_id, study_id, out_path, store, output):
    """One self-contained HTML file to share: the configuration, each model's loss curves, the
    accuracy table with intervals and baselines, accuracy per gadget type, confusion matrices,
    agreement as confidence (risk-coverage curve) and every disagreement side by side with the
    gold output. Figures are embedded; every text from the data is escaped."""
    from .report import write

    if (run_id is None) == (study_id is None):
        raise click.UsageError("give --run-id N or --study ID (one of them)")
    from .console import Table

    path = write(store, out_path, run_id, study_id)
    output.emit([Table("files", "Report written", ["path", "bytes"], [[str(path), path.stat().st_size]])])


# ---------------------------------------------------------------- export
def _run_selection(f):
    for opt in reversed([
        click.option("--run-id", "run_ids", type=RUN_ID, multiple=True, help="A run to export; repeatable."),
        click.option("--study", "study_ids", type=STUDY_ID, multiple=True,
                     help="Every run of a study; repeatable."),
        click.option("--all-runs", is_flag=True, help="Every run in the store."),
    ]):
        f = opt(f)
    return f


def _runs_of(store, run_ids, study_ids, all_runs) -> list[int]:
    """The runs a selection names, each checked to exist (one line for a run or study that does not)."""
    if not (run_ids or study_ids or all_runs):
        raise click.UsageError("nothing selected: give --run-id N (repeatable), --study ID or --all-runs")
    chosen = [store.get_run(r).id for r in run_ids]
    for sid in study_ids:
        chosen += [r.id for r in store.get_study(sid).runs]
    if all_runs:
        chosen += [r.id for r in store.list_runs()]
    return sorted(set(chosen))


@main.group(short_help="Runs out to other tools: CSV/JSONL files, MLflow.")
def export():
    """Runs out to the tools researchers already use: `csv` and `jsonl` (every table and view, one
    file each, for pandas, R or a spreadsheet) and `mlflow` (each run as an MLflow run)."""


def _tidy_command(fmt: str):
    @export.command(fmt, short_help=f"Every table and view of the selection, one .{fmt} file each.")
    @_run_selection
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
                  help="The folder to write into (made if missing; files of the same name are replaced).")
    @db_option
    @output_options(("files",), quiet=False, out_option=False)
    @handle_errors
    def command(run_ids, study_ids, all_runs, out_dir, store, output):
        from .console import Table
        from .export import export_tidy

        runs = _runs_of(store, run_ids, study_ids, all_runs)
        written = export_tidy(store, runs, out_dir, fmt, study_ids)
        output.emit([Table("files", f"Exported {len(runs)} run{'s' if len(runs) != 1 else ''} ({fmt})",
                           ["name", "kind", "rows", "path"], [list(w) for w in written])])

    command.__doc__ = (f"Every table and view of the store, limited to the selected runs (and their studies; "
                       f"a selected study is exported even before it has a run), "
                       f"as DIR/<name>.{fmt}: " + ("a header row, then one row per record." if fmt == "csv" else
                                                   "one JSON object per line.") +
                       " Values as SQLite holds them: booleans 0/1, timestamps as text, JSON columns as text.")
    return command


export_csv = _tidy_command("csv")
export_jsonl = _tidy_command("jsonl")


@main.command("import", short_help="Runs of another store or a JSONL export added to this store.")
@click.argument("source", metavar="SOURCE")
@db_option
@output_options(("tables", "runs"), quiet=False, out_option=False)
@handle_errors
def import_(source, store, output):
    """Add the runs in SOURCE to this store: a folder written by `wmg export jsonl`, or another
    store (a SQLite file or a SQLAlchemy URL), all its runs. Every row gets a new id here and its
    references follow; all or nothing. A row that is already here (the same run, evaluation,
    prediction, ...) is kept as it is, so a second import adds nothing, and the folds of one study
    made on several machines (each store holding the study: `wmg export jsonl --study ID` on the
    first, `wmg import` on the others) come together under that study, ready for `wmg analyze
    models --study ID`. A study recorded with `--record-only` travels the same way before any of its
    folds is made; the folds not made yet are left to `wmg work`. Checkpoints stay
    where they were written: copy them to compare the imported runs again."""
    from .console import Table
    from .export import read_tables

    tables = read_tables(source, into=store)
    if not tables.get("runs") and not tables.get("studies"):
        raise StoreError(f"{source} holds no runs and no studies")
    counts, runs = store.import_tables(tables)
    output.emit([
        Table("tables", f"Imported into {store.shown}", ["name", "added", "already_here"], [list(c) for c in counts]),
        Table("runs", "Runs", ["source_run", "run_here", "added"],
              [[a, b, "yes" if new else "no (already here)"] for a, b, new in runs]),
    ])


@export.command("mlflow", short_help="Each run as an MLflow run (parameters, metrics, artifacts).")
@_run_selection
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI [env MLFLOW_TRACKING_URI; else MLflow's default, sqlite:///mlflow.db in "
                   "this folder].")
@click.option("--experiment", default="wmg", show_default=True, help="The MLflow experiment to log into.")
@click.option("--artifacts/--no-artifacts", default=True, show_default=True,
              help="Also log the comparison's report and the run's plots.")
@db_option
@output_options(("mlflow",), quiet=False, out_option=False)
@handle_errors
def export_mlflow(run_ids, study_ids, all_runs, tracking_uri, experiment, artifacts, store, output):
    """Log each selected run as an MLflow run through MLflow's client API: parameters (data, split,
    seed, options, every model's hyperparameters), per-step training losses and learning rates,
    per-epoch validation losses and development-slice scores, the comparison's metrics per model
    and baseline, and the report and plots as artifacts. Exporting again updates the MLflow run
    (found by its wmg.store and wmg.run_id tags) instead of adding one. Needs `pip install
    'wmg[mlflow]'`."""
    from .console import Table
    from .mlflow_export import export_runs

    done = export_runs(store, _runs_of(store, run_ids, study_ids, all_runs), tracking_uri, experiment, artifacts)
    output.emit([Table("mlflow", f"Exported to MLflow (experiment {experiment})", ["wmg_run", "mlflow_run", "action"],
                       [list(d) for d in done])])


@main.command(short_help="Browse results.db in Datasette, with a canned query per research question.")
@click.option("--port", default=8001, show_default=True, type=click.IntRange(0, 65535), help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--metadata", "metadata_out", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the Datasette metadata (the canned queries, keyed to this store's file) to FILE and exit, "
                   "for `datasette results.db -m FILE`.")
@db_option
@handle_errors
def datasette(port, host, metadata_out, store):
    """Serve the results store with Datasette (`pip install 'wmg[datasette]'`): every table and view to
    browse, and the research questions as canned queries (error analysis by type, confusion,
    disagreements, architecture comparison, agreement as confidence, voting, kappas, models beside
    the baselines, a study pooled over its folds, trends across runs). SQLite stores only."""
    import json
    import subprocess
    import tempfile

    from .browse import metadata_for

    if store.dialect != "sqlite":
        raise click.ClickException(f"Datasette serves SQLite files; {store.shown} is {store.dialect}")
    from sqlalchemy.engine import make_url

    path = make_url(store.url).database or ""
    if not Path(path).is_file():
        raise click.ClickException(f"no results store at {path}: train a run first (`wmg train`)")
    store.engine()  # brings the schema (and its views) to the newest revision
    meta = json.dumps(metadata_for(path), indent=2)
    if metadata_out:
        Path(metadata_out).write_text(meta)
        echo(f"✓ Datasette metadata for {Path(path).name} written to {metadata_out}: "
             f"`datasette {path} -m {metadata_out}`")
        return
    try:
        import datasette as _  # noqa: F401
    except ImportError:
        raise click.ClickException("Datasette is not installed: pip install 'wmg[datasette]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "metadata.json").write_text(meta)
        echo(f"Serving {path} at http://{host}:{port}/ (Ctrl-C stops)")
        sys.exit(subprocess.call([sys.executable, "-m", "datasette", "serve", path, "-m",
                                  str(Path(tmp) / "metadata.json"), "--host", host, "--port", str(port)]))


@main.group()
def data():
    """Dataset files."""


@data.command("check", short_help="Validate a dataset file and print its statistics.")
@click.argument("path", required=False, default=None, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True,
              help="Also fail when a bound of the bundled dataset is missed (label balance, excerpt and location "
                   "length, open-form share, near-duplicates).")
@output_options(("summary", "labels", "forms", "errors", "findings"), json_alias=True)
@handle_errors
def data_check(path, strict, output):
    """Validate a dataset file and print its statistics [default: the bundled dataset].

    Checks JSON per line, the three fields and the output format; prints per-label counts,
    instruction forms, excerpt lengths and near-duplicates. Exit status 1 when a line is invalid
    (file and line are named). Labels outside the six canonical ones are reported, not fatal,
    so a dataset may bring its own taxonomy.
    """
    from .datacheck import check, render, tables

    path = resolve_data(path)
    rep = check(path)
    if output.machine or output.out:
        output.emit(tables(rep))
    else:
        click.echo(render(rep))
    if rep.errors:
        raise click.ClickException(f"{len(rep.errors)} invalid line(s) in {path}, first: {rep.errors[0]}")
    if rep.valid == 0:
        raise click.ClickException(f"{path}: no examples")
    if strict and rep.findings():
        raise click.ClickException(f"{path}: {len(rep.findings())} bound(s) not met: {rep.findings()[0]}")


if __name__ == "__main__":  # pragma: no cover
    main()
