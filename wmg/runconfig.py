"""Run configurations as TOML files.

`wmg train --config run.toml` reads its options from a file: every key is a `wmg train` option
(`learning_rate` or `learning-rate` for `--learning-rate`), the command line overrides the file,
and a key that is no option is one clear error naming it. `wmg show --run-id N --format toml`
writes the file that trains run N again: the same data (its SHA-256 is checked), subsample,
split or fold, seed, init and hyperparameters.

The file is flat (one table, scalars and lists of strings) so that the writer here stays a few
lines; reading uses the standard library's `tomllib` (or `tomli` before Python 3.11).
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class RunConfigError(ValueError):
    """A config file that cannot be used: unreadable, not TOML, or a key that is no option."""


# TrainConfig field -> `wmg train` option, where the names differ.
OPTION_OF_FIELD = {"micro_batch_size": "batch_size"}
# Keys that name no training option and would change nothing about the run: refused with a reason.
NOT_IN_A_CONFIG = {"config": "a config file cannot name another one",
                   "resume": "--resume continues a stored run with its own options",
                   "study": "--study continues a stored study with its own options"}


def option_keys(params: Iterable[Any]) -> dict[str, str]:
    """Every key a config may use, mapped to the click parameter it sets: the parameter's name and
    each of its long option names (dashes or underscores)."""
    keys: dict[str, str] = {}
    for p in params:
        if getattr(p, "param_type_name", "") != "option" or p.name is None:
            continue
        keys[p.name] = p.name
        for opt in p.opts:
            if opt.startswith("--"):
                keys[opt[2:]] = p.name
                keys[opt[2:].replace("-", "_")] = p.name
    return keys


def read(path: str, params: Iterable[Any]) -> dict[str, Any]:
    """The click default map a config file gives: {parameter name: value}."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise RunConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"{path} is not valid TOML: {exc}") from None
    keys = option_keys(params)
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in NOT_IN_A_CONFIG:
            raise RunConfigError(f"{path}: key {key!r} is not allowed in a config ({NOT_IN_A_CONFIG[key]})")
        if key not in keys:
            raise RunConfigError(f"{path}: unknown key {key!r} (not a `wmg train` option)")
        name = keys[key]
        if name in values:
            raise RunConfigError(f"{path}: option {name!r} is given twice")
        if name == "weights" and isinstance(value, dict):  # [weights] model = "folder"
            value = [f"{m}={folder}" for m, folder in value.items()]
        elif isinstance(value, dict):
            raise RunConfigError(f"{path}: key {key!r} is a table; give a value")
        values[name] = value
    return values


# ---------------------------------------------------------------- writing
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} has no TOML form wmg writes")
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string (\" \\ \n \uXXXX escapes)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ValueError(f"{v!r} has no TOML form wmg writes")


def dumps(pairs: Iterable[tuple[str, Any]], comments: Iterable[str] = ()) -> str:
    """A flat TOML document: comment lines, then one `key = value` line per pair (None: left out)."""
    lines = [f"# {c}" if c else "#" for c in comments]
    lines += [f"{k} = {_value(v)}" for k, v in pairs if v is not None]
    return "\n".join(lines) + "\n"


def run_config(run, study=None) -> str:
    """The TOML that trains run `run` (a RunInfo) again with `wmg train --config`."""
    cfg = dict(run.config or {})
    inits = {m.init for m in run.models}
    init = inits.pop() if len(inits) == 1 and cfg.get("init", run.init_requested) == "auto" else \
        cfg.get("init", run.init_requested)
    examples = cfg.get("examples", run.examples_requested)
    pairs: list[tuple[str, Any]] = [
        ("data", run.data_path), ("data_sha256", run.data_sha256),
        ("models", cfg.get("models") or ",".join(m.name for m in run.models)),
        ("examples", "all" if examples is None else examples),
        ("seed", run.seed), ("init", init),
    ]
    if cfg.get("folds"):
        pairs += [("folds", cfg["folds"]), ("fold", run.fold or cfg.get("fold"))]
    else:
        pairs += [("eval_split", cfg.get("eval_split", run.eval_split))]
    if cfg.get("train_fraction", 1.0) != 1.0:
        pairs += [("train_fraction", cfg["train_fraction"])]
    if cfg.get("extra_train"):
        pairs += [("extra_train", list(cfg["extra_train"]))]
    pairs += [("tiny", bool(cfg.get("tiny", False))), ("scratch_vocab", cfg.get("scratch_vocab")),
              ("precision", cfg.get("precision")), ("device", run.device), ("platform", run.platform),
              ("checkpoints", cfg.get("checkpoints"))]
    if cfg.get("sources"):
        pairs += [("weights", [f"{m}={folder}" for m, folder in sorted(cfg["sources"].items())])]
    pairs += [(OPTION_OF_FIELD.get(k, k), v) for k, v in sorted((cfg.get("overrides") or {}).items())]
    ev = run.latest_evaluation
    compare = study.config.get("compare", {}) if study is not None else \
        (cfg.get("compare") or (ev.config if ev is not None and ev.source == "validation" else {}))
    pairs += [(k, compare.get(k)) for k in ("max_new_tokens", "no_repeat_ngram_size", "location_span")]
    if study is not None:
        pairs += [("baseline", compare.get("baseline"))]
    comments = [f"wmg run {run.id} ({run.status}, {run.created_at:%Y-%m-%d %H:%M} UTC), wmg "
                f"{(run.versions or {}).get('wmg', '?')}: `wmg train --config THIS_FILE` trains it again.",
                "Options not set here take wmg's defaults; each model's resulting hyperparameters were:"]
    for m in run.models:
        hp = m.hyperparams or {}
        comments.append(f"  {m.name} ({m.init}): " + ", ".join(
            f"{k} {hp[k]}" for k in ("learning_rate", "epochs", "micro_batch_size", "grad_accum", "schedule",
                                     "warmup_ratio", "weight_decay", "dropout", "type_loss_weight",
                                     "unlikelihood", "label_smoothing", "open_copies", "dev_fraction", "average_epochs",
                                     "optimizer") if k in hp))
    for path, sha in zip(cfg.get("extra_train") or [], cfg.get("extra_train_sha256") or []):
        comments.append(f"extra training file {path}: SHA-256 {sha}")
    if not compare:
        comments.append("The run has no comparison of its validation split: the comparison options take "
                        "their defaults.")
    return dumps(pairs, comments)
