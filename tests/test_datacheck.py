import json
from pathlib import Path

import pytest

from click.testing import CliRunner

from wmg.cli import main
from wmg.datacheck import check

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "weird_machine_gadgets.jsonl"
LABELS = ["ReadWrite gadget", "Arithmetic/Computation gadget", "Control-Flow gadget", "IO and Side-Effect gadget",
          "Timing/Synchronization gadget", "Composition gadget"]


def test_bundled_dataset_meets_every_bound():
    rep = check(BUNDLED)
    assert rep.errors == []
    assert rep.valid == rep.lines >= 492
    assert set(rep.labels) == set(LABELS)
    for label in LABELS:
        assert 0.14 <= rep.labels[label] / rep.valid <= 0.20, label
    assert rep.forms["open"] / rep.valid >= 0.40
    assert 0.15 <= rep.forms["category"] / rep.valid <= 0.60  # a sixth since the open-form parts 7-12 and 17-24
    assert all(40 <= w <= 160 for w in rep.excerpt_words)
    assert all(2 <= w <= 10 for w in rep.location_words)
    assert rep.near_duplicates == [] and rep.max_jaccard < 0.1  # the bound is 0.5; no two excerpts come close
    assert rep.shared_sentences == []
    assert rep.mismatched_categories == []
    assert rep.findings() == []
    # lines are not grouped by label: no run of five equal labels in a row
    labels = [json.loads(l)["output"].split(";")[0] for l in BUNDLED.read_text().splitlines()]
    assert max(sum(1 for _ in g) for _, g in __import__("itertools").groupby(labels)) < 5


@pytest.mark.parametrize("first, last, per_label",
                         [(529, 792, (42, 45)), (793, 1056, (43, 45)), (1057, 1320, (44, 44)), (1321, 1584, (44, 44))])
def test_the_merged_platform_lines_are_open_form_and_share_nothing(tmp_path, first, last, per_label):
    """Lines 529-792 (parts 7 to 9, merged from new_platforms.jsonl), 793-1056 (parts 10 to 12,
    merged from heldout_platforms.jsonl), 1057-1320 (parts 17 to 20, merged from more_features.jsonl)
    and 1321-1584 (parts 21 to 24, merged from more_features_2.jsonl): all open form, labels balanced
    within each block, and not a sentence or near-duplicate shared with the rest of the file."""
    lines = BUNDLED.read_text().splitlines()
    assert len(lines) == 1584
    new = tmp_path / "new.jsonl"
    new.write_text("\n".join(lines[first - 1:last]) + "\n")
    rep = check(new)
    assert rep.errors == [] and rep.valid == 264 and rep.forms == {"open": 264}
    assert set(rep.labels) == set(LABELS) and all(per_label[0] <= n <= per_label[1] for n in rep.labels.values())
    # what they share with the rest of the file: test_bundled_dataset_meets_every_bound (nothing)


def test_the_held_out_platforms_file_is_open_form_and_balanced():
    """The out-of-distribution file (never trained on): valid, all open form, balanced, exact locations."""
    rep = check(BUNDLED.with_name("heldout_platforms_2.jsonl"))
    assert rep.errors == [] and rep.valid == rep.lines == 264 and rep.forms == {"open": 264}
    assert set(rep.labels) == set(LABELS) and all(n == 44 for n in rep.labels.values())
    assert all(2 <= w <= 10 for w in rep.location_words) and all(40 <= w <= 160 for w in rep.excerpt_words)


def test_the_held_out_file_shares_nothing_with_the_bundled_file(tmp_path):
    """Not a sentence or near-duplicate shared between the bundled file and the held-out file."""
    merged = tmp_path / "merged.jsonl"
    merged.write_text("".join(BUNDLED.with_name(n).read_text() for n in (BUNDLED.name, "heldout_platforms_2.jsonl")))
    rep = check(merged)
    assert rep.errors == [] and rep.valid == 1848
    assert rep.shared_sentences == [] and rep.near_duplicates == [] and rep.max_jaccard < 0.1
    assert rep.findings() == []


def test_check_reports_errors_with_file_and_line(tmp_path):
    good = json.loads(BUNDLED.read_text().splitlines()[0])
    lines = [json.dumps(good),
             "not json",
             json.dumps(dict(good, extra="x")),
             json.dumps(dict(good, output="gadget_type: X; location: a; b; explanation: c")),
             json.dumps(dict(good, output=good["output"].replace(good["output"].split(";")[0],
                                                                 "gadget_type: Memory gadget")))]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rep = check(p)
    assert [e.split(": ")[0] for e in rep.errors] == [f"{p}:2", f"{p}:3", f"{p}:4"]
    assert "unexpected field(s) extra" in rep.errors[1]
    assert rep.valid == 2 and rep.unknown_labels == {"Memory gadget": 1}  # reported, not fatal
    r = CliRunner().invoke(main, ["data", "check", str(p)])
    assert r.exit_code == 1 and f"{p}:2" in r.output
    r = CliRunner().invoke(main, ["data", "check", "--json", str(BUNDLED)])
    assert r.exit_code == 0
    records = json.loads(r.stdout)
    summary = {x["metric"]: x["value"] for x in records if x["table"] == "summary"}
    assert summary["valid"] >= 492 and summary["near_duplicate_pairs"] == 0 and summary["bounds_not_met"] == 0
    assert not [x for x in records if x["table"] == "findings"]
    labels = {x["label"]: x["examples"] for x in records if x["table"] == "labels"}
    assert len(labels) == 6 and sum(labels.values()) == summary["valid"]


def test_near_duplicates_are_found(tmp_path):
    good = json.loads(BUNDLED.read_text().splitlines()[0])
    twin = dict(good, input=good["input"] + " One more short sentence here.")
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(twin) + "\n")
    rep = check(p)
    assert [(a, b) for a, b, _ in rep.near_duplicates] == [(1, 2)]
    assert rep.shared_sentences
    r = CliRunner().invoke(main, ["data", "check", "--strict", str(p)])
    assert r.exit_code == 1 and "near-duplicate" in r.output


@pytest.mark.parametrize("text, labels", [
    ("Identify weird machine READ/WRITE gadgets in the excerpt.", ["ReadWrite gadget"]),
    ("Identify weird machine IO AND SIDE-EFFECT gadgets in the excerpt.", ["IO and Side-Effect gadget"]),
    ("Which TIMING/SYNCHRONIZATION gadget of a weird machine does this excerpt show?", ["Timing/Synchronization gadget"]),
    ("Find the control flow gadget, or a composition one", ["Control-Flow gadget", "Composition gadget"]),
    ("Identify any weird machine gadget in the excerpt. Report gadget_type, location and explanation.", []),
    ("Read the excerpt and name the weird machine gadget it contains.", []),
    ("The compositional logic reads and writes", []),  # words, not substrings
])
def test_named_labels(text, labels):
    from wmg.parse import named_labels

    assert named_labels(text) == labels


def test_instructions_that_give_the_answer_away_are_counted(tmp_path):
    rep = check(BUNDLED)
    assert sum(rep.names_gold.values()) == 276 and rep.names_gold["category"] == 264  # the free half
    assert rep.names_gold.get("open", 0) == 0 and rep.mismatched_categories == []
    good = json.loads(BUNDLED.read_text().splitlines()[0])
    wrong = dict(good, instruction="Identify weird machine COMPOSITION gadgets in the excerpt.")
    assert not good["output"].startswith("gadget_type: Composition")
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(wrong) + "\n")
    rep = check(p)
    assert [(n, named) for n, named, _ in rep.mismatched_categories] == [(2, "Composition gadget")]
    r = CliRunner().invoke(main, ["data", "check", str(p)])
    assert "line 2: names 'Composition gadget'" in r.output


def test_a_location_that_is_not_a_span_of_its_excerpt_is_a_finding(tmp_path):
    good = json.loads(BUNDLED.read_text().splitlines()[0])
    loc = good["output"].split("; location: ")[1].split(";")[0]
    lines = [json.dumps(good), json.dumps(dict(good, output=good["output"].replace(loc, loc.upper())))]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rep = check(p)
    assert rep.valid == 2 and rep.location_not_in_excerpt == [2]
    assert any("1 locations are not an exact span of their excerpt (lines 2)" in f for f in rep.findings())
