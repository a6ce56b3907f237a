"""`harness report` over a real results store, through the real command line."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.gateway import GatewayStats
from harness.report import build_leaderboard, to_markdown
from harness.store import Metric, Status, Step, Store

OPEN = {  # the worked example of test_scoring.py: scores A 0.630, B 0, C 0.397
    "A": {"mmlu:a": 0.5, "mmlu:b": 0.4, "gsm": 0.2, "ppl": 10.0},
    "B": {"mmlu:a": 0.5, "mmlu:b": 0.6, "gsm": None, "ppl": 12.0},
    "C": {"mmlu:a": 0.3, "mmlu:b": 0.4, "gsm": 0.1, "ppl": 8.0},
}
SCENARIOS = {"mmlu:a": "mmlu", "mmlu:b": "mmlu", "gsm": "gsm8k", "ppl": "lm"}
CLOSED = {"A": 0.2, "B": 0.5, "C": 0.8}  # one run spec: win rates 0, 0.5, 1
BAD_REASON = "dependency resolution failed: a|b <script>alert(1)</script> [/bold]"


def _fill(results_dir: Path, stages: tuple[str, ...] = ("open", "closed")) -> None:
    with Store(results_dir) as store:
        for entry in ["A", "B", "C", "D"]:
            store.add_entry(entry, results_dir / "entries" / entry)
            for stage in stages:
                attempt = store.start_attempt(entry, stage)
                log = results_dir / stage / entry / "build.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text("build output\n")
                step = store.start_step(attempt, Step.BUILD)
                if entry == "D":
                    store.finish_step(step, ok=False, detail="dependency-resolution", log_path=log)
                    store.record_status(attempt, Status.BUILD_FAILED, BAD_REASON)
                    continue
                store.finish_step(step, ok=True, log_path=log)
                if stage == "open":
                    metrics = [
                        Metric(name, SCENARIOS[name], "m", value, lower_is_better=name == "ppl")
                        for name, value in OPEN[entry].items()
                    ]
                else:
                    metrics = [Metric("closed:x", "x", "exact_match", CLOSED[entry])]
                store.record_metrics(attempt, metrics)
                requests = log.with_name("requests.jsonl")
                requests.write_text("{}\n")
                unanswered = 3 if entry == "B" else 0
                stats = GatewayStats(10, 10 - unanswered, unanswered, 0, 0.1, 0.2, 0.3, 0.4)
                store.record_gateway_stats(attempt, stats, requests)
                status = Status.EVAL_TIMEOUT if unanswered else Status.SCORED
                store.record_status(attempt, status, "3 unanswered" if unanswered else "")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("href"):
            self.hrefs.append(values["href"] or "")
        if values.get("src"):
            self.srcs.append(values["src"] or "")


def test_report_command_writes_all_three_and_prints_the_table(tmp_path: Path) -> None:
    _fill(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for entry in "ABCD":
        assert entry in result.output
    assert "Kendall tau-b" in result.output
    assert "[/bold]" in result.output  # printed as text, not taken for rich markup

    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = board["rows"]
    # C: (0.397 + 2 * 1) / 3, B: (0 + 2 * 0.5) / 3, A: (0.630 + 2 * 0) / 3, then D unranked.
    assert [(row["entry"], row["rank"]) for row in rows] == [
        ("C", 1),
        ("B", 2),
        ("A", 3),
        ("D", None),
    ]
    assert rows[0]["final"] == pytest.approx((0.0625 ** (1 / 3) + 2) / 3)
    assert rows[1]["final"] == pytest.approx(1 / 3)
    assert rows[2]["final"] == pytest.approx(0.25 ** (1 / 3) / 3)
    assert rows[2]["stages"]["open"]["scenario_win_rates"] == {"gsm8k": 1.0, "lm": 0.5, "mmlu": 0.5}
    assert rows[1]["status"] == "open: eval-timeout; closed: eval-timeout"
    assert rows[1]["unanswered"] == 6
    assert rows[3]["status"] == "open: build-failed; closed: build-failed"
    assert rows[3]["final"] is None
    # Open ranks A > C > B, closed C > B > A: only (B, C) is concordant; d = (2, -1, -1).
    assert board["agreement"]["kendall_tau_b"] == pytest.approx(-1 / 3)
    assert board["agreement"]["spearman"] == pytest.approx(1 - 6 * 6 / (3 * 8))

    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "a\\|b &lt;script>" in markdown  # a pipe does not break the table, nor HTML it
    assert "[open build](open/C/build.log)" in markdown

    html = (tmp_path / "leaderboard.html").read_text()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    links = _Links()
    links.feed(html)
    assert links.srcs == []  # no external assets: the sorting script is inline
    assert len(links.hrefs) == 3 * 2 * 2 + 2  # build + requests logs of A-C, build logs of D
    for href in links.hrefs:
        assert not Path(href).is_absolute()
        assert (tmp_path / href).is_file()


def test_a_single_stage_has_no_stage_columns_nor_agreement(tmp_path: Path) -> None:
    _fill(tmp_path, stages=("open",))
    with Store(tmp_path, create=False) as store:
        board = build_leaderboard(store)
    assert board.stages == ["open"]
    assert board.agreement is None
    assert [(row.entry, row.rank) for row in board.rows] == [
        ("A", 1),
        ("C", 2),
        ("B", 3),
        ("D", None),
    ]
    assert board.rows[-1].status == "build-failed"
    header = to_markdown(board).splitlines()[4]
    assert header == "| Rank | Entry | Score | Status | Reason | Unanswered | Logs |"


def test_entries_without_a_result_and_an_empty_store(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("E", "e")
        store.start_step(store.start_attempt("E", "closed"), Step.BUILD)  # then the harness died
        board = build_leaderboard(store)
    assert [(row.entry, row.rank, row.status) for row in board.rows] == [("E", None, "not run")]
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "leaderboard.json").read_text())["rows"][0]["rank"] is None


def test_a_folder_without_results_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no results store" in result.output
    assert not (tmp_path / "nothing").exists()
