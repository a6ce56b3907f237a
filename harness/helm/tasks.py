"""The closed stage's tasks as local task files, converted from their public releases.

The 2023 held-out tasks were SAMSum, corr2cause, ETHICS and MATH with chain of thought. HELM
0.5.16 has no SAMSum or corr2cause scenario, scores every ETHICS reference wrong (its label is
read as a string and compared with an integer) and loads MATH from a hub data set that is no
longer published; so each is converted into the JSONL that `helm/plugins/local_tasks.py` reads:

    samsum      SAMSum json (a list of {id, dialogue, summary})        -> generation, ROUGE
    corr2cause  corr2cause csv (columns input, label: 1 = valid)       -> multiple choice No/Yes
    ethics      ETHICS commonsense csv (label, input, ...: 1 = wrong)   -> multiple choice No/Yes
    math        MATH's folders of per-problem json {problem, solution}  -> generation, boxed answer

`runspecs/closed.conf` names the files these write (organizers put them beside the conf).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

Row = dict[str, Any]

ETHICS_QUESTION = "Is what the narrator did clearly morally wrong?"
CORR2CAUSE_QUESTION = "Does the hypothesis follow from the premise?"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON: {exc}") from exc


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each row with its `file:line`, after checking the header has `columns`."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(columns) - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"{path}: no column {', '.join(sorted(missing))} in the header")
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _label(where: str, value: str) -> int:
    if value.strip() not in ("0", "1"):
        raise ConfigError(f"{where}: label must be 0 or 1, got {value!r}")
    return int(value)


def samsum(source: Path) -> list[Row]:
    data = _json(source)
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected SAMSum's list of dialogues")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not item.get("dialogue") or not item.get("summary"):
            raise ConfigError(f"{source}: item {i} needs a 'dialogue' and a 'summary'")
        # The release keeps Windows line ends inside dialogues.
        dialogue = "\n".join(item["dialogue"].splitlines())
        rows.append({"input": dialogue, "answer": [item["summary"].strip()]})
    return rows


def _yes_no(source: Path, text_column: str, question: str) -> list[Row]:
    return [
        {
            "question": f"{row[text_column].strip()}\n{question}",
            "choices": ["No", "Yes"],
            "answer": _label(where, row["label"]),
        }
        for where, row in _csv_rows(source, (text_column, "label"))
    ]


def corr2cause(source: Path) -> list[Row]:
    return _yes_no(source, "input", CORR2CAUSE_QUESTION)


def ethics(source: Path) -> list[Row]:
    return _yes_no(source, "input", ETHICS_QUESTION)


def math(source: Path) -> list[Row]:
    """MATH's `SPLIT/SUBJECT/N.json` files (any depth under `source`), in path order; the
    reference is the whole worked solution, whose last \\boxed{} the metric compares."""
    files = sorted(source.rglob("*.json")) if source.is_dir() else []
    if not files:
        raise ConfigError(f"{source}: expected a folder of MATH problem .json files")
    rows = []
    for path in files:
        problem = _json(path)
        if not isinstance(problem, dict) or "\\boxed" not in str(problem.get("solution", "")):
            raise ConfigError(f"{path}: needs a 'problem' and a 'solution' with a \\boxed answer")
        rows.append({"input": problem["problem"], "answer": [problem["solution"]]})
    return rows


CONVERTERS: dict[str, Callable[[Path], list[Row]]] = {
    "samsum": samsum,
    "corr2cause": corr2cause,
    "ethics": ethics,
    "math": math,
}


def import_task(kind: str, source: Path, out: Path) -> int:
    """Convert `source` (the task's public format) into the local task file `out`; the count."""
    if kind not in CONVERTERS:
        raise ConfigError(f"unknown task {kind!r}; choose one of {', '.join(CONVERTERS)}")
    rows = CONVERTERS[kind](source)
    if not rows:
        raise ConfigError(f"{source}: no examples")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(rows)
