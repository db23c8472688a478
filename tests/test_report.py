"""`wmg report`: the HTML page rendered by a real browser (headless Chromium through Playwright).

Chromium comes from the distribution's packages (`.ci/run` installs it when missing); without
it these tests skip and say why, unless WMG_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from tests.analysis_fixture import AR, CF, CO, IO, RW, TS, build, make_run
from wmg.cli import main
from wmg.store import Store

REQUIRED = os.environ.get("WMG_REQUIRE_BROWSER") == "1"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
HOSTILE_EXCERPT = 'A <script>document.title="owned"</script> rung & a "quoted" <b>tag</b>'
HOSTILE_OUTPUT = "gadget_type: <img src=x onerror=alert(1)>; location: a & b; explanation: </td></table>"


def browser():
    if CHROMIUM is None or not _playwright():
        reason = "no Chromium on PATH (apt-get install chromium)" if CHROMIUM is None else "playwright not installed"
        if REQUIRED:
            pytest.fail(f"browser tests required (WMG_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    return sync_playwright(), CHROMIUM


def _playwright() -> bool:
    try:
        import playwright  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The analysis fixture (runs 1 and 2), one excerpt and one output made hostile, and a study of
    two folds (runs 3 and 4)."""
    db = str(tmp_path_factory.mktemp("report") / "results.db")
    build(db)
    with sqlite3.connect(db) as conn:  # example 1 is one the two models of run 1 disagree on
        conn.execute("UPDATE examples SET input = ? WHERE run_id = 1 AND split = 'validation' AND position = 1",
                     (HOSTILE_EXCERPT,))
        conn.execute("UPDATE predictions SET raw_text = ? WHERE model = 'm1' AND example_id = "
                     "(SELECT id FROM examples WHERE run_id = 1 AND split = 'validation' AND position = 1)",
                     (HOSTILE_OUTPUT,))
    sid = Store(db).create_study(data_path="fixture.jsonl", data_sha256="0" * 64, folds=2, seeds=[1],
                                 config={"train": {"models": "m1,m2", "init": "scratch"}, "compare": {}})
    make_run(db, ["m1", "m2"], [RW, AR, CF], [(RW, RW), (AR, CF), (TS, CF)], words=[10, 20, 30],
             forms=["open"] * 3, study_id=sid, fold=1)
    make_run(db, ["m1", "m2"], [IO, TS, CO], [(IO, CO), (TS, TS), (CO, CO)], words=[10, 20, 30],
             forms=["open"] * 3, study_id=sid, fold=2)
    return db


def render(html_path, screenshot=None):
    """What a browser shows: the tables (data-table names), each image's load state, the scripts
    on the page, and the text of the page and of its disagreement blocks."""
    pw, exe = browser()
    with pw as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1300, "height": 2000})
        page.goto(html_path.as_uri())
        page.wait_for_load_state("load")
        shown = {
            "tables": page.eval_on_selector_all("table[data-table]", "ts => ts.map(t => t.dataset.table)"),
            "rows": page.eval_on_selector_all("table[data-table] tbody", "bs => bs.map(b => b.rows.length)"),
            "images": page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"),
            "scripts": page.evaluate("document.scripts.length"),
            "title": page.title(),
            "text": page.inner_text("body"),
            "examples": page.eval_on_selector_all(".ex", "es => es.map(e => e.innerText)"),
            "sections": page.eval_on_selector_all("section", "ss => ss.map(s => s.id)"),
        }
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
        b.close()
    return shown


def test_the_run_report_renders_its_tables_and_images_in_a_browser(store, tmp_path):
    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", "--run-id", "1", "--db", store, "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = render(out, tmp_path / "report.png")
    assert page["sections"] == ["configuration", "training", "accuracy", "by-type", "confidence", "disagreements"]
    for name in ("run", "config", "models", "by_type", "confusion", "confidence", "risk_coverage", "aurc"):
        assert name in page["tables"], name
    assert all(n > 0 for n, name in zip(page["rows"], page["tables"]) if name not in ("pairs",))
    # loss curves, one confusion matrix per model, the risk-coverage curve: all loaded
    assert len(page["images"]) == 4 and all(done and width > 100 for done, width, _ in page["images"])
    assert any("confusion" in alt for *_, alt in page["images"])
    assert page["scripts"] == 0 and page["title"] == "wmg report: run 1"  # the excerpt's script did not run
    assert "75.0% [30.1, 95.4]" in page["text"]  # m1: 3 of 4 right, with its Wilson interval
    # run 1's models disagree on examples 1, 2 and 3; the hostile texts are shown as text
    assert len(page["examples"]) == 3 and "3 examples on which the models' normalized types differ" in page["text"]
    assert HOSTILE_EXCERPT in page["examples"][0] and "<img src=x onerror=alert(1)>" in page["examples"][0]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_study_report_pools_its_folds(store, tmp_path):
    out = tmp_path / "study.html"
    r = CliRunner().invoke(main, ["report", "--study", "1", "--db", store, "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = render(out)
    assert {"study", "study_runs", "study_pairs", "confidence"} <= set(page["tables"])
    assert page["title"] == "wmg report: study 1"
    # a loss-curve image per run (2), one pooled confusion matrix per model (2), the pooled risk-coverage curve
    assert len(page["images"]) == 5 and all(done and width > 100 for done, width, _ in page["images"])
    assert "pooled over 2 folds" in page["text"]
    assert len(page["examples"]) == 3  # fold 1 examples 1 and 2, fold 2 example 0


def test_report_refuses_what_it_cannot_show(store, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["report", "--db", store, "--out", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "give --run-id N or --study ID" in r.output
    r = runner.invoke(main, ["report", "--run-id", "9", "--db", store, "--out", str(tmp_path / "x.html")])
    assert r.exit_code == 1 and "no run with id 9" in r.output and not (tmp_path / "x.html").exists()
