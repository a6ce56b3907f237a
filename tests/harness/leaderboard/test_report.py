"""`harness report` over a real results store, through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.leaderboard.build import build_leaderboard
from harness.leaderboard.figures import FIGURE_HEIGHT_PT, FIGURE_WIDTH_PT, FIGURES
from harness.leaderboard.html import entry_page, to_html
from harness.leaderboard.text import to_json, to_markdown
from harness.store import GatewayStats, Metric, Status, Step, Store

# The worked example of test_scoring.py: scores A 0.630, B 0, C 0.397.
OPEN: dict[str, dict[str, float | None]] = {
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


def _assert_svg_size(svg: str) -> None:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == (
        f"{FIGURE_WIDTH_PT}pt",
        f"{FIGURE_HEIGHT_PT}pt",
    )
    assert 'href="http' not in svg  # nothing fetched


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
    # Per scenario: the win rate and the main metric's mean over the scenario's run specs.
    assert rows[2]["stages"]["open"]["scenarios"] == {
        "gsm8k": {"win_rate": 1.0, "value": 0.2, "metric": "m"},
        "lm": {"win_rate": 0.5, "value": 10.0, "metric": "m"},
        "mmlu": {"win_rate": 0.5, "value": pytest.approx(0.45), "metric": "m"},
    }
    assert rows[2]["scenarios"]["closed/x"] == {
        "win_rate": 0.0,
        "value": 0.2,
        "metric": "exact_match",
    }
    assert rows[1]["scenarios"]["open/gsm8k"] == {"win_rate": 0.0, "value": None, "metric": "m"}
    assert board["columns"] == ["open/gsm8k", "open/lm", "open/mmlu", "closed/x"]
    assert rows[1]["status"] == "open: eval-timeout; closed: eval-timeout"
    assert rows[1]["unanswered"] == 6
    assert rows[3]["status"] == "open: build-failed; closed: build-failed"
    assert rows[3]["final"] is None
    assert rows[3]["scenarios"] == {}
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
    assert links.srcs == []  # no external assets: the script, style and figures are inline
    assert html.count("<svg") == len(FIGURES)
    assert len(links.hrefs) == 4  # each entry's name links its page
    for href in links.hrefs:
        assert not Path(href).is_absolute()
        assert (tmp_path / href).is_file()
    page = (tmp_path / links.hrefs[-1]).read_text()  # D's: its failed build and its log
    assert "&lt;script&gt;" in page and "<script>" not in page
    page_links = _Links()
    page_links.feed(page)
    for href in page_links.hrefs:
        assert (tmp_path / "leaderboard" / href).resolve().is_file()
    assert "../open/D/build.log" in page_links.hrefs
    assert "../leaderboard.html" in page_links.hrefs


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
    assert header == (
        "| Rank | Entry | Score | gsm8k | lm | mmlu | Status | Reason | Cost (USD) | Logs |"
    )
    figures = {name: draw(board) for name, draw in FIGURES.items()}
    assert "Needs both stages" in figures["stages"]  # said in the figure, not an empty frame
    for svg in figures.values():
        _assert_svg_size(svg)


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


def _one_entry(results_dir: Path, entry: str, *, failed: bool) -> None:
    """One entry in the open stage: scored on one run spec, or failed at its build."""
    with Store(results_dir) as store:
        store.add_entry(entry, results_dir / "entries" / entry)
        attempt = store.start_attempt(entry, "open")
        store.finish_step(store.start_step(attempt, Step.BUILD), ok=not failed)
        if failed:
            store.record_status(attempt, Status.BUILD_FAILED, "pip failed")
            return
        for step in (Step.SERVE, Step.EVALUATE):
            store.finish_step(store.start_step(attempt, step), ok=True)
        store.record_metrics(attempt, [Metric("parity", "parity", "quasi_exact_match", 1.0)])
        store.record_status(attempt, Status.SCORED, "")


def _render_everything(results_dir: Path) -> dict[str, object]:
    result = CliRunner().invoke(app, ["report", str(results_dir)])
    assert result.exit_code == 0, result.output
    html = (results_dir / "leaderboard.html").read_text()
    assert html.count("<svg") == len(FIGURES)
    board: dict[str, object] = json.loads((results_dir / "leaderboard.json").read_text())
    return board


def test_one_entry_only(tmp_path: Path) -> None:
    _one_entry(tmp_path, "solo", failed=False)
    board = _render_everything(tmp_path)
    rows = board["rows"]
    assert isinstance(rows, list)
    assert rows[0]["rank"] == 1
    assert rows[0]["scenarios"] == {
        "parity": {"win_rate": 1.0, "value": 1.0, "metric": "quasi_exact_match"}
    }
    assert (tmp_path / "leaderboard" / rows[0]["entry"]).parent.is_dir()
    # Nothing measured its image or GPU: unknown, so null in the JSON and blank in the tables.
    efficiency = rows[0]["stages"]["open"]["efficiency"]
    assert (efficiency["image_bytes"], efficiency["gpu_peak_bytes"]) == (None, None)
    markdown = (tmp_path / "leaderboard.md").read_text()
    header, _, row = markdown.split("## Efficiency")[1].strip().splitlines()
    names, values = ([cell.strip() for cell in line.split("|")[1:-1]] for line in (header, row))
    shown = dict(zip(names, values, strict=True))
    assert shown["Entry"] == "solo" and shown["Build time (s)"] != ""
    assert (shown["Image (GiB)"], shown["Peak GPU (GiB)"]) == ("", "")


def test_only_failed_entries(tmp_path: Path) -> None:
    _one_entry(tmp_path, "x", failed=True)
    _one_entry(tmp_path, "y", failed=True)
    with Store(tmp_path, create=False) as store:
        board = build_leaderboard(store)
    assert [(row.entry, row.rank, row.status) for row in board.rows] == [
        ("x", None, "build-failed"),
        ("y", None, "build-failed"),
    ]
    assert board.columns == []
    svgs = {name: draw(board) for name, draw in FIGURES.items()}
    assert "No scored entry" in svgs["scenarios"]
    assert "build-failed" in svgs["status"]
    for svg in svgs.values():
        _assert_svg_size(svg)
    _render_everything(tmp_path)


def test_a_subset_of_entries_is_ranked_among_itself(tmp_path: Path) -> None:
    _fill(tmp_path, stages=("open",))
    with Store(tmp_path, create=False) as store:
        board = build_leaderboard(store, entries=["B", "C", "D", "not-an-entry"])
    # Without A, B wins mmlu and C wins gsm8k and lm: each has a 0 win rate, so both score 0 and
    # tie (with A they are 2nd and 3rd of the open stage).
    assert [(row.entry, row.rank, row.final) for row in board.rows] == [
        ("B", 1, 0.0),
        ("C", 1, 0.0),
        ("D", None, None),
    ]


def test_efficiency_comes_from_the_steps_and_the_request_log(tmp_path: Path) -> None:
    _one_entry(tmp_path, "e", failed=False)
    log = tmp_path / "logs" / "requests.jsonl"
    log.parent.mkdir()
    lines = [
        {"endpoint": "/tokenize", "prompt_tokens": 1000},  # not a completion: not counted
        {"endpoint": "/process", "prompt_tokens": 40, "completion_tokens": 2},
        {"endpoint": "/process", "prompt_tokens": None, "completion_tokens": 3},
        {"endpoint": "/process"},  # a log written before tokens were counted
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"endpoint": "/pro')
    with Store(tmp_path) as store:
        attempt = store.start_attempt("e", "open")
        store.record_gateway_stats(attempt, GatewayStats(5, 3, 1, 0, 0.1, 0.2, 0.3, 0.4), log)
        store.record_resources("e", "open", image_bytes=int(5.46 * 2**30))
        store.record_resources("e", "open", gpu_peak_bytes=int(17.26 * 2**30))
        board = build_leaderboard(store, track="A100")
    row = board.rows[0]
    efficiency = row.stages["open"].efficiency
    assert (efficiency.answered, efficiency.unanswered) == (3, 1)
    assert (efficiency.prompt_tokens, efficiency.completion_tokens) == (40, 5)
    assert efficiency.eval_s is not None and efficiency.eval_s >= 0
    assert efficiency.eval_limit_s == 300 * 60
    assert [step.step for step in row.stages["open"].steps] == ["build", "serve", "evaluate"]
    assert row.cost.track == "A100" and row.cost.price_per_gpu_hour == 1.0
    assert row.cost.usd == pytest.approx(efficiency.gpu_hours)
    assert row.stages["open"].logs == {"requests": "logs/requests.jsonl"}
    assert (efficiency.image_bytes, efficiency.gpu_peak_bytes) == (
        int(5.46 * 2**30),
        int(17.26 * 2**30),
    )
    # Shown in GiB with one decimal, in the page, the Markdown and the JSON.
    page = to_html(board)
    efficiency_table = page[page.index('<table id="efficiency"') :]
    efficiency_table = efficiency_table[: efficiency_table.index("</table>")]
    assert "<th>Image (GiB)</th><th>Peak GPU (GiB)</th>" in efficiency_table
    assert '<td class="num">5.5</td><td class="num">17.3</td>' in efficiency_table
    markdown = to_markdown(board)
    assert "## Efficiency" in markdown and "| 5.5 | 17.3 |" in markdown
    stage = json.loads(to_json(board))["rows"][0]["stages"]["open"]["efficiency"]
    assert (stage["image_bytes"], stage["gpu_peak_bytes"]) == (
        int(5.46 * 2**30),
        int(17.26 * 2**30),
    )


def test_cost_counts_reproduced_training_at_the_given_price(tmp_path: Path) -> None:
    _one_entry(tmp_path, "e", failed=False)
    folder = tmp_path / "reproduce" / "e-1234"
    folder.mkdir(parents=True)
    training = {"wall_time_s": 7200.0, "finished": True}
    (folder / "reproduction.json").write_text(
        json.dumps({"entry": "e", "track": "4090", "training": training})
    )
    (tmp_path / "reproduce" / "half-written").mkdir()
    (tmp_path / "reproduce" / "half-written" / "reproduction.json").write_text('{"entry": ')
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--price", "4090=0.5"])
    assert result.exit_code == 0, result.output
    cost = json.loads((tmp_path / "leaderboard.json").read_text())["rows"][0]["cost"]
    assert cost["track"] == "4090"  # from the reproduction, as no --track was given
    assert cost["train_gpu_hours"] == 2.0
    assert cost["usd"] == pytest.approx((2.0 + cost["eval_gpu_hours"]) * 0.5)
    page = next((tmp_path / "leaderboard").glob("e-*.html")).read_text()
    assert "2.0000 of training at USD 0.5/h, track 4090" in page


@pytest.mark.parametrize("price", ["4090", "4090=cheap", "=1", "A100=-1"])
def test_a_bad_price_is_a_usage_error(tmp_path: Path, price: str) -> None:
    _one_entry(tmp_path, "e", failed=False)
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--price", price])
    assert result.exit_code == 2
    assert "--price takes TRACK=USD_PER_GPU_HOUR" in result.output
    assert not (tmp_path / "leaderboard.json").exists()


def test_the_body_embeds_with_links_where_the_caller_says(tmp_path: Path) -> None:
    _fill(tmp_path, stages=("open",))
    with Store(tmp_path, create=False) as store:
        board = build_leaderboard(store)
    body = to_html(board, standalone=False, entry_link=lambda entry: f"/entries/{entry}")
    assert "<html" not in body and "<body" not in body
    assert body.startswith('<div class="leaderboard">')
    links = _Links()
    links.feed(body)
    assert links.hrefs == ["/entries/A", "/entries/C", "/entries/B", "/entries/D"]
    assert 'title="m: 0.4500"' in body  # the raw main metric on hover


def test_the_terminal_leaves_many_scenario_columns_to_the_files(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.add_entry("e", "e")
        attempt = store.start_attempt("e", "open")
        names = [f"scenario{i}" for i in range(9)]
        store.record_metrics(attempt, [Metric(name, name, "exact_match", 0.5) for name in names])
        store.record_status(attempt, Status.SCORED, "")
    result = CliRunner().invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "9 scenario columns: see leaderboard.html" in result.output
    assert "scenario8" not in result.output
    assert "scenario8" in (tmp_path / "leaderboard.md").read_text()


def test_piped_output_keeps_each_entry_on_one_line(tmp_path: Path) -> None:
    names = ["team-" + "alpha" * 8, "team-" + "beta" * 9, "team-unbuildable-" + "x" * 30]
    reason = "gsm: max_tokens 400 does not fit a 256-token context"
    with Store(tmp_path) as store:
        for value, name in zip((0.9, 0.1, None), names, strict=True):
            store.add_entry(name, name)
            attempt = store.start_attempt(name, "open")
            if value is None:
                store.record_status(attempt, Status.BUILD_FAILED, BAD_REASON + " " * 3 + "z" * 90)
                continue
            metrics = [Metric("mmlu:a", "mmlu", "exact_match", value),
                       Metric("gsm", "gsm", "exact_match", 0.0, reason=reason)]  # fmt: skip
            store.record_metrics(attempt, metrics)
            store.record_status(attempt, Status.SCORED, f"1 run(s) scored, 1 refused ({reason})")
    # A pipe, as in CI logs or `| tee`: not a terminal, whatever width it would have.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "harness"), "report", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in names:
        [row] = [line for line in lines if name in line]
        assert row.startswith("| ") and row.endswith(" |")
    # Win rates: mmlu 1 (the higher value), gsm 0.5 (both refused: a tie at 0); score sqrt(0.5).
    assert f"| 1 | {names[0]} | 0.707 | 0.500 | 1.000 | scored | 1 run(s) scored" in result.stdout
    assert "z" * 90 in result.stdout
    assert f"wrote {tmp_path / 'leaderboard.md'}, " in result.stdout
    # Each run spec's reason is kept with its value and shown on the entry's page.
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    gsm = board["rows"][0]["stages"]["open"]["run_specs"]["gsm"]
    assert (gsm["value"], gsm["reason"]) == (0.0, reason)
    assert f"<td>{reason}</td>" in (tmp_path / entry_page(names[0])).read_text()
