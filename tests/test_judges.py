"""The offline judges, storing verdicts, manual annotation and judges against manual labels."""
import csv
import json
import sqlite3

import pytest
from click.testing import CliRunner

from tests.analysis_fixture import AR, CF, RW, TS, build
from wmg.cli import main
from wmg.judges.embedding import EmbeddingJudge, similarity
from wmg.judges.rules import RulesJudge, category, garbled


def out(t, expl="It could be misused by an attacker."):
    return f"gadget_type: {t}; location: the enable contact; explanation: {expl}"


GARBLED = ("gadget_type: Control example Control block is a kind of function block that is TRUE when a mode bit is "
           "TRUE. The function block is not executed in that cycle; location: x; explanation: y")


@pytest.mark.parametrize("a, b, verdict", [
    ("Command enable logic", "Control-Flow gadget", "partial"),  # specific vs its category
    ("READWRITE gadget", "BOOL tag", "partial"),  # category vs an instance of it
    ("ReadWrite", "READWRITE", "full"),
    ("ReadWrite", "Timing", "disagreement"),
    ("IO and Side-Effect gadget", "IO and SIDE-EFFECT gadgets", "full"),
    ("TON preset", "watchdog timer", "full"),  # same category, both specific
])
def test_rules_judge_on_the_tutorials_examples(a, b, verdict):
    v = RulesJudge().compare(out(a), out(b), "")
    assert v.verdict == verdict, v
    assert 0 <= v.confidence <= 1 and v.explanation


def test_rules_judge_garbled_is_invalid():
    assert RulesJudge().compare(GARBLED, out("Control-Flow gadgets"), "").verdict == "invalid"
    assert garbled(GARBLED).startswith("a gadget type of")
    assert "repeated" in garbled(out("Timing gadget", "by the s s s s s s s s"))
    assert garbled("gadget_type: Timing gadget; location: x") == "missing explanation"
    assert garbled(out("ReadWrite gadget")) is None
    assert category("COMPOS") is None  # truncated: no category
    assert category("Timing/Computation gadget") is None  # two categories equally: ambiguous
    assert RulesJudge().against_gold(out("BOOL tag"), out(RW)).verdict == "partial"


def test_embedding_judge_offline_orders_related_above_unrelated():
    related = similarity("timer preset reached", "TON accumulator done bit")
    unrelated = similarity("timer preset reached", "Modbus holding register write")
    assert related > unrelated
    j = EmbeddingJudge()
    s_rel, _, _ = j.score(out("Command enable logic"), out("Control-Flow gadget"))
    s_unrel, _, _ = j.score(out("Composition gadget"), out("IO and Side-Effect gadget"))
    assert s_rel > s_unrel
    assert j.compare(out("ReadWrite"), out("READWRITE"), "").verdict == "full"
    assert j.compare(GARBLED, out("Control-Flow gadget"), "").verdict == "invalid"


def test_embedding_thresholds_fit_manual_labels_only_when_enough():
    assert EmbeddingJudge.fit([(out(RW), out(RW), "full")] * 3).fitted_on == 0  # too few: defaults
    pairs = [(out(RW), out("READWRITE"), "full")] * 6 + [(out(RW), out(TS), "disagreement")] * 6 \
        + [(out(CF), out("Command enable logic"), "partial")] * 6
    fitted = EmbeddingJudge.fit(pairs)
    assert fitted.fitted_on == 18
    assert [fitted.compare(a, b, "").verdict for a, b, _ in pairs[::6]] == ["full", "disagreement", "partial"]


@pytest.fixture
def store(tmp_path):
    db = str(tmp_path / "results.db")
    build(db)
    return db


def q(db, sql, *a):
    with sqlite3.connect(db) as c:
        return c.execute(sql, a).fetchall()


def test_judge_command_stores_sets_side_by_side(store):
    r = CliRunner().invoke(main, ["judge", "--run-id", "2", "--judge", "rules", "--db", store, "--no-progress"])
    assert r.exit_code == 0, r.output
    # 5 examples x (3 pairs + 1 overall + 3 gold)
    assert q(store, "SELECT kind, COUNT(*) FROM judgments GROUP BY kind ORDER BY kind") == [
        ("gold", 15), ("overall", 5), ("pair", 15)]
    assert q(store, "SELECT judge, judge_version, evaluation_id FROM judgment_sets") == [("rules", "1", 2)]
    # judging again adds a set; --replace swaps the judge's sets for one new one
    CliRunner().invoke(main, ["judge", "--run-id", "2", "--judge", "rules", "--db", store, "--no-progress"])
    assert q(store, "SELECT COUNT(*) FROM judgment_sets") == [(2,)]
    r = CliRunner().invoke(main, ["judge", "--run-id", "2", "--judge", "rules", "--replace", "--db", store,
                                  "--no-progress"])
    assert r.exit_code == 0
    assert q(store, "SELECT id FROM judgment_sets") == [(3,)]
    assert q(store, "SELECT COUNT(*) FROM judgments") == [(35,)]
    # example 0: all three say ReadWrite -> full overall
    v = q(store, "SELECT j.verdict FROM judgments j JOIN examples x ON x.id = j.example_id "
                 "WHERE j.kind = 'overall' AND x.position = 0 AND j.set_id = 3")
    assert v == [("full",)]
    # model a produced no fields on example 4: its pairs and the overall verdict are invalid
    v = q(store, "SELECT j.kind, j.verdict FROM judgments j JOIN examples x ON x.id = j.example_id "
                 "WHERE x.position = 4 AND j.set_id = 3 AND (j.kind = 'overall' OR j.model_a = 'a') ORDER BY j.kind")
    assert {k for k, _ in v} == {"gold", "overall", "pair"} and {x for _, x in v} == {"invalid"}
    rates = q(store, "SELECT judge, examples, full_rate, string_agreement_rate FROM semantic_agreement")
    assert rates == [("rules", 5, pytest.approx(0.2), pytest.approx(0.2))]


def test_annotation_session_through_stdin_resumes(store):
    # run 1 has 3 disagreements (positions 1, 2, 3)
    r = CliRunner().invoke(main, ["annotate", "--run-id", "1", "--annotator", "ana", "--db", store],
                           input="p\nrelated by category\nx\nd\n\nq\n")
    assert r.exit_code == 0, r.output
    assert "please answer" in r.output and "labelled 2 example(s) as ana; 1 left" in r.output
    labels = q(store, "SELECT x.position, a.label, a.note FROM annotations a JOIN examples x ON x.id = a.example_id "
                      "ORDER BY x.position")
    assert labels == [(1, "partial", "related by category"), (2, "disagreement", None)]
    r = CliRunner().invoke(main, ["annotate", "--run-id", "1", "--annotator", "ana", "--db", store], input="i\n\n")
    assert "Example 3 (1/1 to label" in r.output and "labelled 1 example(s)" in r.output


def test_csv_round_trip_and_compare_to_manual(store, tmp_path):
    src = tmp_path / "labels.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["position", "label", "annotator", "note"])
        w.writerows([[1, "disagreement", "bo", ""], [2, "partial", "bo", "timing vs control"],
                     [3, "disagreement", "bo", ""]])
    r = CliRunner().invoke(main, ["annotate", "--run-id", "1", "--import", str(src), "--db", store])
    assert r.exit_code == 0 and "imported 3 labels" in r.output
    exported = tmp_path / "out.csv"
    CliRunner().invoke(main, ["annotate", "--run-id", "1", "--export", str(exported), "--db", store])
    back = list(csv.DictReader(exported.open()))
    assert [(row["position"], row["label"], row["annotator"], row["note"]) for row in back] == [
        ("1", "disagreement", "bo", ""), ("2", "partial", "bo", "timing vs control"), ("3", "disagreement", "bo", "")]
    # re-importing the export changes nothing
    CliRunner().invoke(main, ["annotate", "--run-id", "1", "--import", str(exported), "--db", store])
    assert q(store, "SELECT COUNT(*) FROM annotations") == [(3,)]
    bad = tmp_path / "bad.csv"
    bad.write_text("position,label\n1,maybe\n")
    r = CliRunner().invoke(main, ["annotate", "--run-id", "1", "--import", str(bad), "--db", store])
    assert r.exit_code != 0 and "bad.csv:2: label 'maybe'" in r.output

    CliRunner().invoke(main, ["judge", "--run-id", "1", "--judge", "rules", "--db", store, "--no-progress"])
    r = CliRunner().invoke(main, ["judge", "--run-id", "1", "--compare-to", "manual", "--db", store,
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    head = [rec for rec in json.loads(r.stdout) if rec["table"] == "judges"]
    conf = [rec for rec in json.loads(r.stdout) if rec["table"] == "confusion"]
    assert sum(c["n"] for c in conf if c["judge"] == "string match") == 3
    by = {row["judge"].split(" (")[0]: row for row in head}
    # string matching calls all three "disagreement": right on 2 of 3
    assert by["string match"]["labelled"] == 3 and by["string match"]["accuracy"] == pytest.approx(2 / 3)
    # rules: AR vs CF, TS vs CF, IO vs Composition -> three disagreements: also 2 of 3
    assert by["rules"]["accuracy"] == pytest.approx(2 / 3)


def test_judge_errors_are_one_line(store):
    r = CliRunner().invoke(main, ["judge", "--run-id", "1", "--compare-to", "manual", "--db", store])
    assert r.exit_code != 0 and "no manual labels yet" in r.output
    r = CliRunner().invoke(main, ["judge", "--run-id", "1", "--judge", "llm", "--db", store, "--no-progress",
                                  "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--retries", "1",
                                  "--api-key", "sk-SECRET-123"])
    assert r.exit_code != 0 and "unreachable" in r.output and "SECRET" not in r.output
    assert q(store, "SELECT COUNT(*) FROM judgment_sets") == [(0,)]  # nothing stored on failure
    r = CliRunner().invoke(main, ["judge", "--db", store, "--judge", "rules"])
    assert r.exit_code != 0 and "--run-id" in r.output


def test_llm_judge_through_the_cli_stores_verdicts_but_never_the_key(store, tmp_path):
    """A full `wmg judge --judge llm` against a local scripted server; the key is nowhere at rest."""
    import threading

    from tests.test_judge_llm import Scripted, openai_reply, verdict_json

    srv = Scripted()
    # run 1 has 4 examples: 2 orders per pair + 1 gold question per model = 4 requests each
    srv.script.extend([openai_reply(verdict_json("DISAGREEMENT"))] * 16)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        key = "sk-live-TOPSECRET-42"
        report = tmp_path / "r.json"
        r = CliRunner().invoke(main, ["judge", "--run-id", "1", "--judge", "llm", "--db", store, "--no-progress",
                                      "--base-url", srv.url + "/v1",
                                      "--judge-model", "local-judge", "--api-key", key])
        assert r.exit_code == 0, r.output
        assert all(req["headers"].get("authorization") == f"Bearer {key}" for req in srv.requests)
    finally:
        srv.shutdown()
    assert q(store, "SELECT judge, model, prompt_hash IS NOT NULL FROM judgment_sets") == [("llm", "local-judge", 1)]
    assert q(store, "SELECT COUNT(*), SUM(verdict = 'disagreement') FROM judgments WHERE kind = 'overall'") == [(4, 4)]
    from wmg.judges.verdicts import _safe_url

    assert _safe_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"  # URL credentials are not stored
    for path in [store] + [store + s for s in ("-wal", "-shm")]:
        try:
            data = open(path, "rb").read()
        except FileNotFoundError:
            continue
        assert key.encode() not in data
    assert key not in r.output
