"""The `wmg` command line. Thin: each command parses options, builds a config
and calls library code. torch and transformers are imported inside command
bodies so `wmg --help` and `wmg runs` answer instantly."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .config import DEFAULT_MODELS, DEFAULT_NO_REPEAT, REGISTRY, ConfigError
from .checkpoint import CheckpointError
from .data import DEFAULT_DATA, DataError, parse_examples_option
from .interrupt import RunInterrupted, Terminated, terminate_as_interrupt
from .judges.base import JudgeError
from .store.session import StoreError

DB_HELP = "Results store: a SQLite file path or any SQLAlchemy URL [env WMG_DB; default results.db]."


def db_option(f):
    return click.option("--db", envvar="WMG_DB", default=None, metavar="URL|PATH", help=DB_HELP)(f)


def handle_errors(f):
    """Known problems become one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return f(*args, **kwargs)
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
    click.echo(msg)


class RunId(click.ParamType):
    name = "RUN_ID"

    def convert(self, value, param, ctx):
        try:
            v = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a run id (a positive whole number)", param, ctx)
        if v < 1:
            self.fail(f"{value!r} is not a run id (a positive whole number)", param, ctx)
        return v


RUN_ID = RunId()


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


NO_REPEAT = click.option("--no-repeat-ngram-size", "no_repeat", type=click.IntRange(0), default=DEFAULT_NO_REPEAT,
                         show_default=True, help="Greedy decoding never repeats an n-gram of this length (0: plain greedy, as the tutorial). Breaks the loops an undertrained model falls into; recorded with the evaluation.")


# ---------------------------------------------------------------- train
@main.command()
@click.option("--data", default=str(DEFAULT_DATA), show_default=True, type=click.Path(dir_okay=False),
              help="JSONL dataset: one {instruction, input, output} object per line.")
@click.option("--models", default=",".join(DEFAULT_MODELS), show_default=True,
              help=f"Comma-separated models to train, from the registry: {', '.join(REGISTRY)}.")
@click.option("--examples", default="auto", show_default=True,
              help="How many examples to subsample before the split: a number, 'all', or 'auto' (the tutorial's "
                   "100 when every model loads pretrained weights, all of them for scratch init).")
@click.option("--eval-split", default=0.1, show_default=True, type=float,
              help="Fraction held out as the validation split every model is compared on.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the subsample, split, init and order.")
@click.option("--init", type=click.Choice(["auto", "pretrained", "scratch"]), default="auto", show_default=True,
              help="pretrained: from_pretrained (hub id or cache); scratch: published architecture with random "
                   "weights and a tokenizer trained on the training split; auto: pretrained if it loads, else "
                   "scratch (announced and recorded).")
@click.option("--weights", "weights", multiple=True, metavar="MODEL=PATH",
              help="Load a model's pretrained weights from a local folder instead of its hub id (repeatable).")
@click.option("--epochs", type=int, default=None, help="Epochs [pretrained 3; scratch 6].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Dropout of every layer [pretrained: the published 0.1; scratch: 0, which is a third faster "
                   "per step on a CPU].")
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=None,
              help="Peak learning rate [pretrained 5e-5; scratch 1e-3 seq2seq, 6e-4 causal].")
@click.option("--batch-size", type=int, default=None, help="Micro-batch size [pretrained 1; scratch 8].")
@click.option("--grad-accum", type=int, default=None,
              help="Micro-batches per optimizer step (effective batch = batch size x this) [pretrained 4; scratch 1].")
@click.option("--warmup-ratio", type=float, default=None, help="Fraction of steps of linear warmup [0; scratch 0.1].")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]), default=None,
              help="Decay after warmup [pretrained linear; scratch cosine].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [0; scratch 0.01].")
@click.option("--max-grad-norm", type=float, default=None, help="Gradient clipping norm [1.0].")
@click.option("--max-input-length", type=int, default=None, help="Seq2seq prompt tokens [512].")
@click.option("--max-target-length", type=int, default=None, help="Answer tokens [256].")
@click.option("--max-causal-length", type=int, default=None, help="Causal prompt+answer tokens [768].")
@click.option("--causal-loss", type=click.Choice(["answer", "full"]), default=None,
              help="Causal models: loss on the answer tokens only (default) or on the whole sequence (the tutorial).")
@click.option("--log-every", type=click.IntRange(0), default=None,
              help="Print the loss every N optimizer steps (0: only at epoch ends) [10].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CPUs with AMX/AVX512-BF16, else fp32.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default="cpu", show_default=True,
              help="CPU by default: CUDA and MPS are disabled unless asked for here.")
@click.option("--platform", type=click.Choice(["auto", "unix", "windows"]), default="auto", show_default=True,
              help="unix: worker processes for data loading; windows: none.")
@click.option("--checkpoints", default="checkpoints", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints/<run>/<model>/final_model are saved.")
@click.option("--scratch-vocab", type=int, default=None,
              help="Vocabulary size of tokenizers trained for scratch init [4000 for both the Unigram (T5) and the BPE (GPT-2) tokenizer].")
@click.option("--tiny", is_flag=True, help="Tiny 2-layer, width-64 architectures (scratch): for tests and smoke runs.")
@click.option("--compare/--no-compare", default=True, show_default=True, help="Run the comparison after training.")
@click.option("--max-new-tokens", default=256, show_default=True, type=int, help="Generation limit in the comparison.")
@NO_REPEAT
@click.option("--report", default="ensemble_report.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where the comparison writes its JSON report.")
@click.option("--show-examples/--no-show-examples", default=True, show_default=True,
              help="Print the agreement block of every validation example.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
@click.option("--resume", "resume", type=RUN_ID, default=None,
              help="Continue an interrupted run from its last checkpoint, with its own data split and options "
                   "(only the comparison and display options may be given with it).")
@db_option
@handle_errors
def train(data, models, examples, eval_split, seed, init, weights, epochs, dropout, learning_rate, batch_size, grad_accum,
          warmup_ratio, schedule, weight_decay, max_grad_norm, max_input_length, max_target_length,
          max_causal_length, causal_loss, log_every, precision, device, platform, checkpoints, scratch_vocab, tiny, compare,
          max_new_tokens, no_repeat, report, show_examples, progress, resume, db):
    """Fine-tune every model on one split of the data, then compare them (unless --no-compare).

    Prints the new run's id; every step, loss and prediction goes to the results store.
    A checkpoint is written every epoch and on Ctrl-C / SIGTERM; `--resume RUN_ID` continues from it.
    """
    from . import device as dev
    from .config import resolve_models
    from .pipeline import CompareOptions, TrainOptions, compare_run, resume_run, train_run

    if resume is not None:
        ctx = click.get_current_context()
        allowed = {"resume", "db", "compare", "max_new_tokens", "no_repeat", "report", "show_examples", "progress"}
        given = [name for name in ctx.params if name not in allowed
                 and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ConfigError(f"--resume continues a run with its own options; do not give --{given[0].replace('_', '-')}")
        from .store import repo

        run = repo.get_run(db, resume)
        dev.setup(run.device, run.platform, echo)
        resume_run(db, resume, echo, progress)
        run_id, prec, device = resume, run.config["precision"], run.device
    else:
        n_examples = parse_examples_option(examples)
        names = [s.name for s in resolve_models(models)]  # fail fast on an unknown name, before the banner
        sources = {}
        for item in weights:
            name, sep, path = item.partition("=")
            if not sep or name not in names:
                raise ConfigError(f"--weights {item!r}: expected MODEL=PATH with MODEL one of {','.join(names)}")
            if not Path(path).is_dir():
                raise ConfigError(f"--weights {item!r}: {path} is not a folder")
            sources[name] = path
        for name, v in (("--epochs", epochs), ("--batch-size", batch_size), ("--grad-accum", grad_accum),
                        ("--max-new-tokens", max_new_tokens)):
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be at least 1")
        if learning_rate is not None and learning_rate <= 0:
            raise ConfigError("--learning-rate must be positive")
        if not Path(data).is_file():
            raise DataError(f"{data}: data file not found")
        info = dev.setup(device, platform, echo)
        prec = dev.resolve_precision(precision, device)
        overrides = dict(epochs=epochs, learning_rate=learning_rate, micro_batch_size=batch_size, grad_accum=grad_accum,
                         warmup_ratio=warmup_ratio, schedule=schedule, weight_decay=weight_decay,
                         max_grad_norm=max_grad_norm, max_input_length=max_input_length,
                         max_target_length=max_target_length, max_causal_length=max_causal_length, causal_loss=causal_loss,
                         log_every=log_every, dropout=dropout)
        opts = TrainOptions(data=data, models=models, examples=n_examples, eval_split=eval_split, seed=seed, init=init,
                            device=device, platform=info.platform, workers=info.workers, precision=prec,
                            checkpoints=checkpoints, tiny=tiny, scratch_vocab=scratch_vocab, sources=sources,
                            overrides={k: v for k, v in overrides.items() if v is not None}, progress=progress)
        run_id = train_run(db, opts, echo)
    echo("")
    echo(f"Run id: {run_id}")
    if compare:
        compare_run(db, CompareOptions(run_id=run_id, max_new_tokens=max_new_tokens, precision=prec, device=device,
                                       no_repeat_ngram_size=no_repeat,
                                       report=report, progress=progress, show_examples=show_examples), echo)
        echo(f"Run id: {run_id}")


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
                     help="CPU by default: CUDA and MPS are disabled unless asked for here."),
        NO_REPEAT,
    ]):
        f = opt(f)
    return f


@main.command()
@_compare_options
@click.option("--data", default=None, type=click.Path(dir_okay=False),
              help="Compare on every line of another dataset file instead of the run's validation split.")
@click.option("--report", default="ensemble_report.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the JSON report.")
@click.option("--show-examples/--no-show-examples", default=True, show_default=True,
              help="Print the agreement block of every example.")
@click.option("--judge", "judges", multiple=True, type=click.Choice(["rules", "embedding", "llm"]),
              help="Also judge semantic agreement and put the verdicts in the report (repeatable; see `wmg judge`).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
@db_option
@handle_errors
def compare(run_id, max_new_tokens, batch_size, precision, device, no_repeat, data, report, show_examples, judges, progress,
            db):
    """Let every model of a run predict on its validation split (or --data), and store
    predictions, format checks and agreement as a new evaluation."""
    from . import device as dev
    from .pipeline import CompareOptions, compare_run
    from .store import repo

    repo.get_run(db, run_id)  # an unknown id fails before any banner
    if data and not Path(data).is_file():
        raise DataError(f"{data}: data file not found")
    dev.setup(device, "auto", echo)
    eid = compare_run(db, CompareOptions(run_id=run_id, data=data, max_new_tokens=max_new_tokens,
                                         no_repeat_ngram_size=no_repeat,
                                         batch_size=batch_size, precision=dev.resolve_precision(precision, device),
                                         device=device, report=report, progress=progress,
                                         show_examples=show_examples), echo)
    if judges:
        _judge_into_report(db, eid, judges, report, progress)


def _judge_into_report(db, eid, judges, report, progress):
    from .judging import add_to_report, judge_evaluation, summary

    set_ids = {}
    click.echo("")
    click.echo("SEMANTIC AGREEMENT:")
    string = query_string_rate(db, eid)
    click.echo(f"  string agreement (normalized types equal): {string:.1%}")
    for name in judges:
        try:
            set_ids[name], rows = judge_evaluation(db, eid, name, progress=progress)
        except JudgeError as exc:
            raise ConfigError(f"{name} judge: {exc}") from None
        s = summary(rows)
        click.echo(f"  {name} judge: full {s['full_rate']:.1%}, full or partial {s['full_or_partial_rate']:.1%} "
                   f"(judgment set {set_ids[name]})")
    if report:
        add_to_report(report, db, set_ids)


@main.command()
@_compare_options
@click.option("--instruction", default="Identify any weird machine gadget in the excerpt. Report gadget_type, "
                                       "location and explanation.", show_default=True, help="The task text.")
@click.option("--excerpt", required=True, help="The manual excerpt to analyse.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@db_option
@handle_errors
def predict(run_id, max_new_tokens, batch_size, precision, device, no_repeat, instruction, excerpt, as_json, db):
    """Run every model of a trained run on one custom excerpt (nothing is stored)."""
    import contextlib
    import io

    from . import device as dev
    from .pipeline import CompareOptions, predict as do_predict
    from .store import repo

    repo.get_run(db, run_id)
    if not excerpt.strip():
        raise ConfigError("--excerpt is empty")
    sink = io.StringIO()
    say = (lambda m="": sink.write(m + "\n")) if as_json else echo
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        dev.setup(device, "auto", say)
    result = do_predict(db, run_id, instruction, excerpt,
                        CompareOptions(run_id=run_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       no_repeat_ngram_size=no_repeat,
                                       precision=dev.resolve_precision(precision, device), device=device,
                                       report=None), say)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------- runs / show
def _fmt(v, spec=".4f"):
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def table(headers: list[str], rows: list[list]) -> str:
    from .analysis import format_rows

    return "\n".join(format_rows(headers, [[str(c) for c in r] for r in rows]))


def _run_dict(r) -> dict:
    ev = r.latest_evaluation
    return {
        "id": r.id, "created_at": r.created_at.isoformat(timespec="seconds"), "status": r.status,
        "models": [m.name for m in r.models], "init": {m.name: m.init for m in r.models},
        "examples": r.n_train + r.n_validation, "n_train": r.n_train, "n_validation": r.n_validation,
        "seed": r.seed, "epochs": {m.name: m.hyperparams.get("epochs") for m in r.models},
        "final_loss": {m.name: m.final_loss for m in r.models},
        "final_val_loss": {m.name: m.final_val_loss for m in r.models},
        "train_seconds": r.train_seconds,
        "evaluation_id": ev.id if ev else None,
        "evaluation_status": ev.status if ev else None,
        "full_agreement_rate": ev.full_agreement_rate if ev else None,
        "format_accuracy": ev.format_accuracy if ev else {},
        "gold_type_accuracy": ev.gold_accuracy if ev else {},
        "error": r.error,
        "resumes": r.resumes,
        "checkpoint_dir": r.checkpoint_dir,
    }


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: a list of objects with an `id` field, for scripts.")
@db_option
@handle_errors
def runs(fmt, db):
    """List every run: status, models, losses and the latest comparison's agreement."""
    from .interrupt import process_alive
    from .store import repo

    for run_id in repo.reap_dead_runs(db, process_alive):
        click.echo(f"run {run_id}: its process is gone (killed or crashed); marked interrupted, "
                   f"resume with `wmg train --resume {run_id}`", err=True)
    items = [_run_dict(r) for r in repo.list_runs(db)]
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no runs yet: start one with `wmg train`")
        return
    rows = []
    for d in items:
        rows.append([
            d["id"], d["created_at"].replace("T", " "), d["status"], ",".join(d["models"]),
            ",".join(str(d["init"][m] or "-") for m in d["models"]), d["examples"],
            " ".join(_fmt(d["final_loss"][m], ".3f") for m in d["models"]),
            _fmt(d["full_agreement_rate"], ".1%") if d["full_agreement_rate"] is not None else "-",
            " ".join(f"{v:.0%}" for v in d["format_accuracy"].values()) or "-",
            " ".join(f"{v:.0%}" for v in d["gold_type_accuracy"].values()) or "-",
        ])
    click.echo(table(["id", "created", "status", "models", "init", "examples", "final loss", "agreement",
                      "format acc", "gold acc"], rows))


@main.command()
@click.option("--run-id", type=RUN_ID, required=True, help="The run to show.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@db_option
@handle_errors
def show(run_id, fmt, db):
    """Everything about one run: configuration, each model's init, hyperparameters and
    losses, and its latest comparison."""
    from .store import repo

    r = repo.get_run(db, run_id)
    if fmt == "json":
        d = _run_dict(r)
        d.update(config=r.config, versions=r.versions, data_path=r.data_path, data_sha256=r.data_sha256,
                 models_detail=[{k: v for k, v in vars(m).items()} for m in r.models])
        click.echo(json.dumps(d, indent=2, default=str))
        return
    click.echo(f"Run {r.id}: {r.status}  (created {r.created_at:%Y-%m-%d %H:%M:%S} UTC)")
    if r.error:
        click.echo(f"  error: {r.error}")
    click.echo(f"  data: {r.data_path} (sha256 {r.data_sha256[:12]}), {r.n_train} train / {r.n_validation} "
               f"validation, seed {r.seed}, init requested {r.init_requested}, device {r.device}")
    click.echo(f"  versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()))
    if r.checkpoint_dir:
        click.echo(f"  checkpoints: {r.checkpoint_dir}" + (f"; resumed {r.resumes} time(s)" if r.resumes else ""))
    if r.status == "running" and r.pid:
        click.echo(f"  trained by pid {r.pid} on {r.host}")
    rows = [[m.name, m.status, m.init or "-", _fmt(m.parameters, ","), m.vocab_size or "-", m.steps or "-",
             _fmt(m.final_loss), _fmt(m.final_val_loss), _fmt(m.train_seconds, ".0f")] for m in r.models]
    click.echo(table(["model", "status", "init", "parameters", "vocab", "steps", "final loss", "val loss",
                      "seconds"], rows))
    for m in r.models:
        hp = m.hyperparams
        click.echo(f"  {m.name}: lr {hp.get('learning_rate')}, epochs {hp.get('epochs')}, batch "
                   f"{hp.get('micro_batch_size')}x{hp.get('grad_accum')}, {hp.get('schedule')}, precision "
                   f"{hp.get('precision')}; {m.init_note or ''}")
    ev = r.latest_evaluation
    if ev:
        click.echo(f"  latest evaluation {ev.id} ({ev.status}, {ev.source}, {ev.n_examples} examples): "
                   f"full agreement {_fmt(ev.full_agreement_rate, '.1%')}")
        for m in ev.format_accuracy:
            click.echo(f"    {m}: format {ev.format_accuracy[m]:.1%}, gold type {ev.gold_accuracy[m]:.1%}")
    else:
        click.echo("  no comparison yet: run `wmg compare --run-id %d`" % r.id)


# ---------------------------------------------------------------- db
@main.group()
def db():
    """The results store's schema (Alembic migrations)."""


@db.command("upgrade")
@db_option
@handle_errors
def db_upgrade(db):
    """Create the schema or upgrade it to the newest revision."""
    from .store.session import current_revision, get_engine

    get_engine(db)
    click.echo(f"schema at revision {current_revision(db)}")


@db.command("current")
@db_option
@handle_errors
def db_current(db):
    """Print the schema revision of the store (none if it was never initialised)."""
    from .store.session import current_revision

    click.echo(current_revision(db) or "none")


# ---------------------------------------------------------------- analyze / plot
def _selection_options(f):
    for opt in reversed([
        click.option("--run-id", "run_ids", type=RUN_ID, multiple=True,
                     help="A run to analyse (its latest comparison); repeatable."),
        click.option("--evaluation-id", "evaluation_ids", type=RUN_ID, multiple=True,
                     help="A specific comparison to analyse instead of a run's latest; repeatable."),
        click.option("--all-runs", is_flag=True, help="Every run with a completed comparison."),
        click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
                     show_default=True, help="Terminal table, JSON, or CSV (one block per table)."),
    ]):
        f = opt(f)
    return f


@main.group()
def analyze():
    """Research analyses over the results store (reads only the database; loads no model).

    Each analysis is also a SQL view in results.db (see the README's "Querying results.db").
    """


def _analysis_command(name: str, doc: str):
    @analyze.command(name, help=doc)
    @_selection_options
    @db_option
    @handle_errors
    def command(run_ids, evaluation_ids, all_runs, fmt, db):
        from .analysis import render, select
        from .analysis.questions import QUESTIONS

        sel = select(db, run_ids, all_runs, evaluation_ids)
        click.echo(render(QUESTIONS[name](db, sel), fmt))

    return command


for _name, _doc in [
    ("disagreements", "Examples where the models disagree, side by side with the gold type; whether disagreement "
                      "correlates with excerpt length (point-biserial and Spearman, with p) and with the "
                      "instruction form (category vs open, Fisher's exact test)."),
    ("models", "Architecture comparison: per model format accuracy, gold-type accuracy, ROUGE-1/ROUGE-L F1, final "
               "loss, training seconds, parameters and init."),
    ("confidence", "Agreement as confidence: accuracy where all models agree vs where they do not; the "
                   "risk-coverage curve ordered by agreement and its area (AURC)."),
    ("by-type", "Error analysis by gadget type: per gold label, each model's accuracy and the disagreement rate; "
                "the confusion matrix of gold against predicted canonical label."),
    ("vote", "Majority voting: the vote's accuracy against each model's own, with the tie rule stated."),
    ("agreement", "Cohen's kappa for every pair of models and Fleiss' kappa for all of them, on normalized "
                  "types, next to the raw agreement rate."),
]:
    _analysis_command(_name, _doc)


@analyze.command("runs")
@click.option("--run-id", "run_ids", type=RUN_ID, multiple=True, help="Only these runs (default: every run).")
@click.option("--all-runs", is_flag=True, help="Every run (the default).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="Terminal table, JSON, or CSV.")
@db_option
@handle_errors
def analyze_runs(run_ids, all_runs, fmt, db):
    """One row per run: the configuration that differs between runs (examples, epochs, learning rate, models,
    init, seed) and its agreement rate, format and gold-type accuracy per model."""
    from .analysis import AnalysisError, query, render
    from .analysis.questions import runs as runs_table

    known = {r["id"] for r in query(db, "SELECT id FROM runs")}
    for rid in run_ids:
        if rid not in known:
            raise AnalysisError(f"no run with id {rid}")
    if not known:
        raise AnalysisError("no runs yet: start one with `wmg train`")
    click.echo(render(runs_table(db, list(run_ids) or None), fmt))


@main.command()
@click.option("--run-id", "run_ids", type=RUN_ID, multiple=True, help="A run to plot (its latest comparison); repeatable.")
@click.option("--evaluation-id", "evaluation_ids", type=RUN_ID, multiple=True, help="A specific comparison to plot.")
@click.option("--all-runs", is_flag=True, help="Every run with a completed comparison.")
@click.option("--out", default="plots", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the PNG files.")
@db_option
@handle_errors
def plot(run_ids, evaluation_ids, all_runs, out, db):
    """PNG figures: training loss curves of every model, per-label accuracy bars, the confusion matrix of
    each model, and across runs the agreement and accuracy trend."""
    from .analysis import select
    from .analysis.plots import plot_all

    sel = select(db, run_ids, all_runs, evaluation_ids)
    for path in plot_all(db, sel, out):
        click.echo(f"wrote {path}")


# ---------------------------------------------------------------- judge / annotate
def _evaluation_of(db, run_id, evaluation_id) -> int:
    from .analysis import select

    if evaluation_id is None and run_id is None:
        raise ConfigError("give --run-id N (its latest comparison) or --evaluation-id N")
    return select(db, [run_id] if run_id and not evaluation_id else [],
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


@main.command()
@click.option("--run-id", type=RUN_ID, default=None, help="Judge this run's latest comparison.")
@click.option("--evaluation-id", type=RUN_ID, default=None, help="Judge this comparison instead.")
@click.option("--judge", "judges", multiple=True, type=click.Choice(["rules", "embedding", "llm"]),
              help="Which judge (repeatable): rules (offline lexicon), embedding (offline all-MiniLM-L6-v2), "
                   "llm (a reasoning model over HTTP).")
@click.option("--replace", is_flag=True,
              help="Delete this judge's earlier verdicts on the comparison first (otherwise a new set is added).")
@click.option("--compare-to", type=click.Choice(["manual"]), default=None,
              help="Instead of judging: how well each judge matches the manual labels (accuracy, kappa, confusion).")
@_llm_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bar.")
@db_option
@handle_errors
def judge(run_id, evaluation_id, judges, replace, compare_to, judge_model, api, base_url, api_key, timeout,
          retries, fmt, progress, db):
    """Semantic agreement: a judge gives every example of a comparison a verdict (full, partial,
    disagreement, invalid) with an explanation and a confidence, between the models (every pair and
    overall) and for each model against the gold output. Verdicts of several judges live side by side."""
    from .analysis import Table, render
    from .judging import compare_to_manual, judge_evaluation, summary

    eid = _evaluation_of(db, run_id, evaluation_id)
    if compare_to:
        click.echo(render(compare_to_manual(db, eid, judges), fmt))
        return
    if not judges:
        raise ConfigError("give --judge rules|embedding|llm (or --compare-to manual)")
    rows = []
    for name in judges:
        try:
            set_id, verdicts = judge_evaluation(db, eid, name, replace=replace, progress=progress,
                                                api=api, base_url=base_url, model=judge_model, api_key=api_key,
                                                timeout=timeout, retries=retries)
        except JudgeError as exc:
            raise ConfigError(f"{name} judge: {exc}") from None
        s = summary(verdicts)
        rows.append([name, set_id, eid, s["examples"], s["full_rate"], s["full_or_partial_rate"]]
                    + [s["counts"][k] for k in ("full", "partial", "disagreement", "invalid", "error")])
    string = query_string_rate(db, eid)
    click.echo(render([Table("Semantic agreement", ["judge", "judgment_set", "evaluation", "examples", "full_rate",
                                                    "full_or_partial_rate", "full", "partial", "disagreement",
                                                    "invalid", "error"], rows,
                             [f"string agreement rate of the same comparison: {string:.1%}"])], fmt))


def query_string_rate(db, eid) -> float:
    from .store import repo

    return repo.get_evaluation(db, eid).full_agreement_rate or 0.0


@main.command()
@click.option("--run-id", type=RUN_ID, default=None, help="Annotate this run's latest comparison.")
@click.option("--evaluation-id", type=RUN_ID, default=None, help="Annotate this comparison instead.")
@click.option("--annotator", default=lambda: __import__("getpass").getuser(), show_default="your user name",
              help="Who is labelling (stored with each label).")
@click.option("--all-examples", is_flag=True, help="Also show examples where the models agree.")
@click.option("--import", "import_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Import labels from a CSV (label and example_id or position; annotator and note optional).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Export every label of the comparison to a CSV.")
@db_option
@handle_errors
def annotate(run_id, evaluation_id, annotator, all_examples, import_path, export_path, db):
    """Label the models' outputs by hand: each disagreement is shown (instruction, excerpt, gold,
    each model's output) and gets full / partial / disagreement / invalid and an optional note.
    Labels are stored as they are given, so a session resumes where it stopped."""
    from .judging import annotate_session, export_csv, import_csv

    eid = _evaluation_of(db, run_id, evaluation_id)
    try:
        if import_path:
            click.echo(f"imported {import_csv(db, eid, import_path, annotator)} labels into evaluation {eid}")
        if export_path:
            click.echo(f"exported {export_csv(db, eid, export_path)} labels to {export_path}")
        if import_path or export_path:
            return
        done, left = annotate_session(db, eid, annotator, lambda q: click.prompt(q, default="", show_default=False),
                                      click.echo, include_agreements=all_examples)
    except JudgeError as exc:
        raise ConfigError(str(exc)) from None
    except click.Abort:
        click.echo("")
        done, left = 0, None
    click.echo(f"labelled {done} example(s) as {annotator}"
               + (f"; {left} left (run the same command to resume)" if left else ""))


# ---------------------------------------------------------------- bench
@main.command()
@click.option("--models", default=",".join(DEFAULT_MODELS), show_default=True, help="Models to measure.")
@click.option("--quick", is_flag=True, help="A short version (4 optimizer steps, 4 generations, a tiny memory run).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory run of `wmg train`.")
@click.option("--data", default=str(DEFAULT_DATA), show_default=True, type=click.Path(dir_okay=False),
              help="Examples to train and generate on.")
@handle_errors
def bench(models, quick, as_json, no_memory, data):
    """Speed of the toolkit against the tutorial's way (HF Trainer, batch 1, padding to max length, fp32;
    generation one example at a time), side by side on this machine: examples/s and tokens/s, final loss
    after the same steps, identical greedy outputs, training MFU and peak memory. Needs `wmg[bench]`."""
    from . import bench as b
    from .config import resolve_models

    names = [s.name for s in resolve_models(models)]
    if not Path(data).is_file():
        raise DataError(f"{data}: data file not found")
    say = (lambda m: click.echo(m, err=True)) if as_json else echo
    res = b.run(names, quick, data=data, memory=not no_memory, echo=say)
    click.echo(b.to_json(res) if as_json else b.render(res))


# ---------------------------------------------------------------- data
@main.group()
def data():
    """Dataset files."""


@data.command("check")
@click.argument("path", required=False, default=str(DEFAULT_DATA), type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
@click.option("--strict", is_flag=True,
              help="Also fail when a bound of the bundled dataset is missed (label balance, excerpt and location "
                   "length, open-form share, near-duplicates).")
@handle_errors
def data_check(path, as_json, strict):
    """Validate a dataset file (JSON per line, the three fields, the output format) and print
    its statistics: per-label counts, instruction forms, excerpt lengths, near-duplicates.

    Exit status 1 when a line is invalid (file and line are named). Labels outside the six
    canonical ones are reported, not fatal, so a dataset may bring its own taxonomy.
    """
    from .datacheck import check, render

    if not Path(path).is_file():
        raise DataError(f"{path}: data file not found")
    rep = check(path)
    click.echo(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False) if as_json else render(rep))
    if rep.errors:
        raise click.ClickException(f"{len(rep.errors)} invalid line(s) in {path}, first: {rep.errors[0]}")
    if rep.valid == 0:
        raise click.ClickException(f"{path}: no examples")
    if strict and rep.findings():
        raise click.ClickException(f"{path}: {len(rep.findings())} bound(s) not met: {rep.findings()[0]}")


if __name__ == "__main__":  # pragma: no cover
    main()
