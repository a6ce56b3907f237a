"""A reproduction's report pages: each entry's reproduction.{md,html,json} in its folder, and the
combined report of `harness reproduce --top` (RESULTS_DIR/reproduce/report.{md,json,html}).

The HTML is the leaderboard's: its templates (reproduction.html.j2 beside the leaderboard's, the
same stylesheet) and its figures (figures.py draws the loss curves and the scores with their
intervals). Every page is drawn from the reproduction's JSON, so an entry that a resumed `--top`
kept from an earlier run looks in the combined page exactly as on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from harness.leaderboard import write_files
from harness.leaderboard.figures import ScoreRow, loss_curves, scores_with_intervals
from harness.leaderboard.html import render_page
from harness.reproduce.options import Reproduction, duration_text, to_json, to_markdown
from harness.secrets import redact
from harness.store import entry_slug

REPORT = "reproduction"  # each entry's reproduction.{md,html,json}
COMBINED = "report"  # --top's, in RESULTS_DIR/reproduce/
SCHEMA_VERSION = 1  # of the combined JSON


def write_reports(result: Reproduction) -> list[Path]:
    """The entry's reproduction.md, .html and .json, each whole; the JSON last, as it marks the
    reproduction finished (`--top` keeps an entry that has one)."""
    document = redact(to_json(result))
    page = to_html(
        [json.loads(document)],
        title=f"Reproduction of {result.entry}",
        stem=REPORT,
        back="../../leaderboard.html",
    )
    outputs = {
        f"{REPORT}.md": redact(to_markdown(result)),
        f"{REPORT}.html": redact(page),
        f"{REPORT}.json": document,
    }
    return write_files(result.folder, outputs)


# -- the HTML page ------------------------------------------------------------------------------


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _scores(data: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[ScoreRow]]:
    """The score table's run columns and rows, and the figure's rows: the judgements where the
    verdict came from statistics, else the first run's comparison as far as it got."""
    noise = data.get("noise") or {}
    judgements = data.get("judgements") or {}
    if judgements:
        runs = max(len(j["runs"]) for j in judgements.values())
        names = ["Run"] if runs == 1 else [f"Run {k}" for k in range(1, runs + 1)]
        table, figure = [], []
        for name, j in judgements.items():
            interval = noise.get(name)
            table.append(
                {
                    "name": name,
                    "original": _number(j["original"]),
                    "interval": "n/a"
                    if interval is None
                    else f"[{interval['low']:.4f}, {interval['high']:.4f}]",
                    "runs": [_number(v) for v in j["runs"]],
                    "mean": _number(j["original"] + j["difference"]),
                    "difference": f"{j['difference']:+.4f}",
                    "p": "n/a" if j["p_value"] is None else f"{j['p_value']:.3g}",
                    "verdict": j["verdict"],
                }
            )
            low, high = (interval["low"], interval["high"]) if interval else (None, None)
            figure.append(ScoreRow(name, j["original"], low, high, j["runs"]))
        return names, table, figure
    comparison = data.get("comparison")
    if not comparison:
        return [], [], []
    table, figure = [], []
    for s in comparison["scenarios"]:
        table.append(
            {
                "name": s["scenario"],
                "original": _number(s["original"]),
                "interval": "n/a",
                "runs": [_number(s["reproduced"])],
                "mean": _number(s["reproduced"]),
                "difference": _number(s.get("difference")),
                "p": "n/a",
                "verdict": "",
            }
        )
        if s["original"] is not None:
            found = [] if s["reproduced"] is None else [s["reproduced"]]
            figure.append(ScoreRow(s["scenario"], s["original"], None, None, found))
    return ["Run"], table, figure


def _section(data: Mapping[str, Any], link: str | None) -> dict[str, Any]:
    run_names, scores, figure_rows = _scores(data)
    curves = {
        label: [(point["step"], point["loss"]) for point in points]
        for label, points in (data.get("curves") or {}).items()
    }
    seeds = ", ".join("the entry's config" if s is None else str(s) for s in data["seeds"])
    settings = (
        f"Track {data['track']}, stage {data['stage']}; asked: {data.get('request', 'once')}; "
        f"training time limit {duration_text(data['time_limit_s'])}; tolerance "
        f"{data['tolerance']:g} (absolute, on each scenario's mean main metric); "
        f"seeds: {seeds or 'none'}."
    )
    if data.get("weights_identical") is not None:
        same = "identical to" if data["weights_identical"] else "different from"
        settings += f" The replay's weights are {same} the submitted ones (sha256)."
    return {
        "entry": data["entry"],
        "anchor": entry_slug(data["entry"]),
        "verdict": data["verdict"],
        "reason": data["reason"],
        "settings": settings,
        "run_names": run_names,
        "scores": scores,
        "scores_svg": Markup(scores_with_intervals(figure_rows)),
        "loss_svg": Markup(loss_curves(curves)),
        "runs": [
            {
                "name": k,
                "seed": "config" if run["seed"] is None else run["seed"],
                "wall": f"{run['wall_time_s']:.1f}",
                "score": _number(run["stage_score"]),
            }
            for k, run in enumerate(data.get("runs") or [], 1)
        ],
        "log_tail": data.get("log_tail", ""),
        "link": link,
    }


def to_html(
    documents: Sequence[Mapping[str, Any]],
    *,
    title: str,
    stem: str,
    back: str | None,
    summary: Sequence[Mapping[str, Any]] = (),
    links: Sequence[str | None] = (),
) -> str:
    """One page for the reproductions' JSON documents: one entry's, or (with `summary` rows)
    `--top`'s with a link to each entry's own page."""
    intro = (
        "The reproduced runs against the original's scores, per scenario and for the stage "
        "score, and the training loss of the original and of each run."
    )
    return render_page(
        "reproduction.html.j2",
        title=title,
        intro=intro,
        stem=stem,
        back=back,
        summary=summary,
        reproductions=[
            _section(data, links[k] if k < len(links) else None) for k, data in enumerate(documents)
        ],
    )


# -- --top's combined report --------------------------------------------------------------------


@dataclass(frozen=True)
class TopEntry:
    """One of the top entries in `--top`'s report."""

    rank: int  # on the leaderboard of RESULTS_DIR
    entry: str
    kept: bool  # finished by an earlier `--top` (or reproduction) and not redone
    folder: Path  # RESULTS_DIR/reproduce/<slug>/, with the entry's reproduction.{md,html,json}

    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / f"{REPORT}.json").read_text())
        return data

    @property
    def verdict(self) -> str:
        return str(self.document()["verdict"])


def write_combined(folder: Path, entries: Sequence[TopEntry], stage: str) -> list[Path]:
    """RESULTS_DIR/reproduce/report.{md,json,html}: every top entry's reproduction, by rank."""
    documents = [e.document() for e in entries]
    title = f"Reproduction of the top {len(entries)} ({stage} stage)"
    done = {True: "kept from an earlier run", False: "reproduced now"}
    summary = [
        {
            "rank": e.rank,
            "entry": e.entry,
            "anchor": entry_slug(e.entry),
            "verdict": data["verdict"],
            "reason": data["reason"],
            "done": done[e.kept],
        }
        for e, data in zip(entries, documents, strict=True)
    ]
    markdown = [
        f"# {title}",
        "",
        "| rank | entry | verdict | this run | reason |",
        "|---:|---|---|---|---|",
        *(
            f"| {s['rank']} | {s['entry']} | {s['verdict']} | {s['done']} "
            f"| {str(s['reason']).replace('|', '/')} |"
            for s in summary
        ),
        "",
    ]
    for e in entries:
        own = (e.folder / f"{REPORT}.md").read_text()
        # The entry's report one heading level down, under the combined title.
        markdown += ["#" + line if line.startswith("#") else line for line in own.splitlines()]
        markdown.append("")
    combined = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "top": len(entries),
        "entries": [
            {"rank": e.rank, "entry": e.entry, "kept": e.kept, "reproduction": data}
            for e, data in zip(entries, documents, strict=True)
        ],
    }
    links = [f"{e.folder.name}/{REPORT}.html" for e in entries]
    page = to_html(
        documents, title=title, stem=COMBINED, back="../leaderboard.html", summary=summary,
        links=links,
    )  # fmt: skip
    return write_files(
        folder,
        {
            f"{COMBINED}.md": "\n".join(markdown) + "\n",
            f"{COMBINED}.html": page,
            f"{COMBINED}.json": json.dumps(combined, indent=2) + "\n",
        },
    )
