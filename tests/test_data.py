import json

import pytest

from wmg.data import DataError, instruction_form, load_jsonl, parse_examples_option, split, subsample


def write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def line(**kw):
    obj = {"instruction": "Identify any weird machine gadget in the excerpt.", "input": "MOV copies a value.",
           "output": "gadget_type: ReadWrite gadget; location: MOV copies; explanation: It writes."}
    obj.update(kw)
    return json.dumps(obj)


def test_loads_valid_lines_and_skips_blank(tmp_path):
    p = write(tmp_path, line() + "\n\n" + line(input="ADD sums.") + "\n")
    ex = load_jsonl(p)
    assert [e.input for e in ex] == ["MOV copies a value.", "ADD sums."]
    assert ex[0].gold_type == "ReadWrite gadget"


@pytest.mark.parametrize("content, message", [
    (line() + "\n{not json\n", ":2: not valid JSON"),
    (line() + "\n" + json.dumps({"instruction": "x", "input": "y"}) + "\n", ":2: missing field 'output'"),
    (json.dumps(["a"]) + "\n", ":1: expected a JSON object"),
    (line(input=5) + "\n", ":1: field 'input' must be a string"),
    (line(output="  ") + "\n", ":1: field 'output' is empty"),
    ("", "no examples (the file is empty)"),
    ("\n\n", "no examples (the file is empty)"),
])
def test_bad_files_name_file_and_line(tmp_path, content, message):
    p = write(tmp_path, content)
    with pytest.raises(DataError) as err:
        load_jsonl(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_missing_file_and_not_utf8(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_jsonl(tmp_path / "nope.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_jsonl(p)


def test_subsample_and_split_are_seeded_and_disjoint(small_data):
    ex = load_jsonl(small_data)
    a = subsample(ex, 10, seed=1)
    assert a == subsample(ex, 10, seed=1) and len(a) == 10
    assert subsample(ex, None, seed=1) == ex
    train, val = split(a, 0.2, seed=1)
    assert (train, val) == split(a, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert not {e.index for e in train} & {e.index for e in val}
    assert split(a, 0.2, seed=2) != (train, val)


def test_examples_option():
    assert parse_examples_option("all") is None
    assert parse_examples_option("100") == 100
    with pytest.raises(DataError):
        parse_examples_option("1")


def test_instruction_form():
    assert instruction_form("Identify weird machine READ/WRITE gadgets in the excerpt. Report ...") == "category"
    assert instruction_form("Identify any weird machine gadget in the excerpt. Report ...") == "open"
    assert instruction_form("Find the gadget.") == "paraphrase"


# ---------------------------------------------------------------- K-fold studies
def bundled():
    from wmg.data import bundled_data

    return load_jsonl(bundled_data())


@pytest.mark.parametrize("folds, seed", [(5, 42), (3, 7), (10, 1)])
def test_folds_hold_out_every_example_exactly_once_with_label_and_form_proportions_kept(folds, seed):
    from collections import Counter

    from wmg.data import fold_split

    examples = bundled()
    held = Counter()
    strata = Counter((e.gold_type, instruction_form(e.instruction)) for e in examples)
    sizes = []
    for fold in range(1, folds + 1):
        train, val = fold_split(examples, folds, fold, seed)
        assert len(train) + len(val) == len(examples)
        assert not {e.index for e in train} & {e.index for e in val}
        held.update(e.index for e in val)
        sizes.append(len(val))
        in_fold = Counter((e.gold_type, instruction_form(e.instruction)) for e in val)
        for key, n in strata.items():  # each label-and-form stratum split evenly, to within one
            assert n // folds <= in_fold[key] <= -(-n // folds), (fold, key)
        labels = Counter(e.gold_type for e in val)
        for label, n in Counter(e.gold_type for e in examples).items():
            assert abs(labels[label] / len(val) - n / len(examples)) < 0.04
    assert set(held) == {e.index for e in examples} and set(held.values()) == {1}
    assert max(sizes) - min(sizes) <= 1


def test_folds_depend_on_the_seed_and_are_reproducible():
    from wmg.data import fold_assignment

    examples = bundled()
    assert fold_assignment(examples, 5, 42) == fold_assignment(examples, 5, 42)
    assert fold_assignment(examples, 5, 42) != fold_assignment(examples, 5, 43)


@pytest.mark.parametrize("folds, fold, message", [(1, 1, "--folds must be at least 2"),
                                                  (5, 6, "--fold must be between 1 and 5"),
                                                  (5, 0, "--fold must be between 1 and 5")])
def test_bad_fold_options(folds, fold, message):
    from wmg.data import fold_split

    with pytest.raises(DataError, match=message):
        fold_split(bundled()[:20], folds, fold, 1)


def test_training_share_is_stratified_nested_and_keeps_the_order():
    from collections import Counter

    from wmg.data import bundled_data, fold_split, training_share

    train, val = fold_split(load_jsonl(bundled_data()), 5, 1, 42)
    key = lambda e: (e.gold_type, instruction_form(e.instruction))  # noqa: E731
    whole = Counter(map(key, train))
    quarter, half = training_share(train, 0.25, 42), training_share(train, 0.5, 42)
    assert training_share(train, 1.0, 42) == train
    assert abs(len(quarter) - 0.25 * len(train)) <= len(whole) and abs(len(half) - 0.5 * len(train)) <= len(whole)
    for share, f in ((quarter, 0.25), (half, 0.5)):
        counts = Counter(map(key, share))
        assert all(counts[k] == max(1, round(f * n)) for k, n in whole.items())  # every stratum, in proportion
        pos = [train.index(e) for e in share]
        assert pos == sorted(pos)  # the split's (shuffled) order is kept
    assert set(map(id, quarter)) <= set(map(id, half))  # nested: a learning curve adds lines, never swaps them
    assert training_share(train, 0.5, 43) != half  # another seed, another draw
    with pytest.raises(DataError, match="train-fraction"):
        training_share(train, 0, 42)


def test_a_run_trains_on_its_share_and_holds_out_the_same_fold():
    from wmg.data import bundled_data
    from wmg.pipeline import TrainOptions, prepare_data

    def prepared(fraction):
        opts = TrainOptions(data=str(bundled_data()), models="distilgpt2", examples=None, folds=5, fold=1,
                            train_fraction=fraction)
        return prepare_data(opts, lambda *a: None)

    (train, val), (quarter, val_q) = prepared(1.0), prepared(0.25)
    assert val_q == val and len(val) == 317 and len(train) == 1584 - len(val)
    assert 307 <= len(quarter) <= 327 and set(quarter) <= set(train)
