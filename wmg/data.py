"""Load, validate, subsample and split a JSONL dataset of gadget examples."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .parse import gold_type

REQUIRED = ("instruction", "input", "output")
# A line longer than this is refused before it is parsed. An excerpt of 100,000
# words (about 0.7 MB) is accepted and truncated to the model's input length later.
MAX_LINE_BYTES = 4 * 1024 * 1024
BUNDLED_NAME = "weird_machine_gadgets.jsonl"


def bundled_data() -> Path:
    """The dataset shipped inside the package (`data/` of a checkout, `wmg._data` once installed).

    It is the default of every `--data`; a `data/` folder in the working directory is never
    preferred silently."""
    from importlib.resources import files

    try:
        path = Path(str(files("wmg._data") / BUNDLED_NAME))
    except (ModuleNotFoundError, TypeError):
        path = Path(__file__).resolve().parents[1] / "data" / BUNDLED_NAME
    if not path.is_file():
        raise DataError(f"the bundled dataset is missing from this installation ({path}); give --data PATH")
    return path


class DataError(ValueError):
    """A problem with a data file; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    index: int  # 0-based line index in the source file (blank lines skipped)
    instruction: str
    input: str
    output: str

    @property
    def gold_type(self) -> str | None:
        return gold_type(self.output)


def load_jsonl(path: str | Path) -> list[Example]:
    """Read every line; any line that is not a JSON object with the three string fields is an error.

    Other fields are ignored. Errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    examples: list[Example] = []
    for lineno, obj in json_objects(path):
        for key in REQUIRED:
            if key not in obj:
                raise DataError(f"{path}:{lineno}: missing field {key!r}")
            if obj[key] is None:
                raise DataError(f"{path}:{lineno}: field {key!r} is null")
            if not isinstance(obj[key], str):
                raise DataError(f"{path}:{lineno}: field {key!r} must be a string, got {type(obj[key]).__name__}")
            if not obj[key].strip():
                raise DataError(f"{path}:{lineno}: field {key!r} is empty")
            if "\x00" in obj[key]:
                raise DataError(f"{path}:{lineno}: field {key!r} contains a NUL character")
        examples.append(Example(len(examples), obj["instruction"], obj["input"], obj["output"]))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def json_objects(path: Path):
    """(line number, object) for every non-blank line of a JSONL file; a line that is not UTF-8
    or not a JSON object is a DataError naming the file and line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(_lines(fh, path), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _lines(fh, path: Path):
    """Lines of a binary file, refusing (before reading it whole) any longer than MAX_LINE_BYTES."""
    lineno = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB "
                            "(one example per line; is this a JSONL file?)")
        yield raw


def parse_examples_option(value: str | int | None) -> int | None | str:
    """`--examples N`, `all` (None: every line) or `auto` (decided by the init)."""
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if value is None or (isinstance(value, str) and value.lower() == "all"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise DataError(f"--examples must be a number, 'all' or 'auto', not {value!r}") from None
    if n < 2:
        raise DataError("--examples must be at least 2 (one to train on, one to evaluate)")
    return n


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    picked = rng.sample(range(len(examples)), n)
    return [examples[i] for i in sorted(picked)]


def split(examples: list[Example], eval_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with `seed` and hold out `eval_split` of the examples (at least one each side)."""
    if not 0 < eval_split < 1:
        raise DataError("--eval-split must be between 0 and 1")
    if len(examples) < 2:
        raise DataError("need at least 2 examples to split into train and validation")
    order = list(range(len(examples)))
    random.Random(seed + 1).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * eval_split)))
    val = [examples[i] for i in sorted(order[:n_eval])]
    train = [examples[i] for i in order[n_eval:]]
    return train, val


def fold_split(examples: list[Example], folds: int, fold: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Fold `fold` (1 to K) of a stratified K-fold partition: the examples of that fold are held
    out, the rest train. Every example is held out in exactly one fold.

    Stratified by gold label and instruction form: each stratum is shuffled with `seed`, the
    strata are laid end to end, and the sequence is dealt to the folds in turn, so every fold
    holds each stratum's count divided by K (to within one) and the fold sizes differ by at most one."""
    if folds < 2:
        raise DataError("--folds must be at least 2")
    if not 1 <= fold <= folds:
        raise DataError(f"--fold must be between 1 and {folds}")
    if len(examples) < folds:
        raise DataError(f"{folds} folds need at least {folds} examples, the data has {len(examples)}")
    assignment = fold_assignment(examples, folds, seed)
    val = [e for e, f in zip(examples, assignment) if f == fold]
    train = [e for e, f in zip(examples, assignment) if f != fold]
    random.Random(seed + 1).shuffle(train)  # training order as `split` gives it: shuffled, not grouped by label
    return train, val


def _strata(examples: list[Example]) -> dict[tuple, list[int]]:
    """Positions of the examples per stratum: (gold label, instruction form)."""
    strata: dict[tuple, list[int]] = {}
    for i, e in enumerate(examples):
        strata.setdefault((e.gold_type or "", instruction_form(e.instruction)), []).append(i)
    return strata


def training_share(train: list[Example], fraction: float, seed: int) -> list[Example]:
    """About `fraction` of a training split, for learning curves: each stratum (gold label and
    instruction form) shuffled with `seed` keeps its first round(fraction x size) members (at
    least one), so a smaller share is a subset of a larger one; the split's order is kept."""
    if not 0 < fraction <= 1:
        raise DataError("--train-fraction must be above 0 and at most 1")
    if fraction == 1:
        return list(train)
    strata = _strata(train)
    rng = random.Random(seed + 11)
    keep: set[int] = set()
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        keep.update(members[:max(1, round(fraction * len(members)))])
    return [e for i, e in enumerate(train) if i in keep]


def fold_assignment(examples: list[Example], folds: int, seed: int) -> list[int]:
    """The fold (1 to K) of every example, in the examples' order (see `fold_split`)."""
    strata = _strata(examples)
    rng = random.Random(seed)
    order: list[int] = []
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        order += members
    out = [0] * len(examples)
    for pos, i in enumerate(order):
        out[i] = pos % folds + 1
    return out


_CATEGORY_FORM = re.compile(r"(?i)^\s*identify\s+weird\s+machine\s+(.+?)\s+gadgets?\s+in\s+the\s+excerpt")
_OPEN_FORM = re.compile(r"(?i)^\s*identify\s+any\s+weird\s+machine\s+gadgets?\s+in\s+the\s+excerpt")


def instruction_form(instruction: str) -> str:
    """`category` (names the gadget category), `open` (the label must be inferred) or `paraphrase`
    (any other wording; some paraphrases name the category, some do not)."""
    if _OPEN_FORM.match(instruction):
        return "open"
    if _CATEGORY_FORM.match(instruction):
        return "category"
    return "paraphrase"
