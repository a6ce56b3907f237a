"""Tiny raw data sets in the exact formats the competition's tasks are published in.

`write_open_data(DIR, conf)` lays out, under DIR (HELM's `benchmark_output/scenarios/` layout),
what HELM's own scenario code reads for every run entry of an open-stage conf: MMLU CSVs, the
TruthfulQA CSV, GSM8K JSONL, the 11 BBQ category files, BIG-bench task.json files and the
CNN/DailyMail pickle. `write_closed_sources(DIR)` writes the closed stage's public releases:
SAMSum json, corr2cause csv, ETHICS commonsense csv and MATH's per-problem json folders.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

from harness.helm.confs import RunSpecConf

BBQ_CATEGORIES = (
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
    "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
)  # fmt: skip
WORDS = ("the", "a", "model", "reads", "news", "about", "science", "and", "sport", "in", "the",
         "city", "every", "day")  # fmt: skip


def _args(description: str) -> dict[str, str]:
    rest = description.partition(":")[2]
    return dict(part.split("=", 1) for part in rest.split(",") if part)


def _csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def _jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _text(words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i) % len(WORDS)] for i in range(words)) + "."


def write_open_data(root: Path, conf: RunSpecConf, *, size: int = 6) -> Path:
    """Raw files for every entry of `conf`, `size` evaluation instances each (more for some)."""
    for entry in conf.entries:
        args = _args(entry.description)
        if entry.run_spec == "mmlu":
            subject = args["subject"]
            for split, count in (("test", size), ("dev", 5)):
                rows = [[f"{subject} question {i}?", "one", "two", "three", "four", "ABCD"[i % 4]]
                        for i in range(count)]  # fmt: skip
                _csv(root / "mmlu" / "data" / split / f"{subject}_{split}.csv", rows)
        elif entry.run_spec == "big_bench":
            task, subtask = args["task"], args.get("subtask", "")
            examples: list[dict[str, object]] = [
                {"input": f"{task} {subtask} example {i}",
                 "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
                for i in range(36)
            ]  # fmt: skip
            definition = {
                "name": task, "description": f"tiny {task}", "keywords": ["tiny"],
                "metrics": ["multiple_choice_grade"], "examples": examples,
            }  # fmt: skip
            folder = root / "big_bench" / task / subtask if subtask else root / "big_bench" / task
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "task.json").write_text(json.dumps(definition))
    header = ["Type", "Category", "Question", "Best Answer", "Correct Answers",
              "Incorrect Answers", "Source"]  # fmt: skip
    rows = [["Adversarial", "Misc", f"Is claim {i} true?", "No", "No; It is not",
             "Yes; Certainly", "https://example.org"] for i in range(size * 2)]  # fmt: skip
    _csv(root / "truthful_qa" / "data" / "TruthfulQA.csv", [header, *rows])
    for split in ("train", "test"):
        _jsonl(root / "gsm" / f"gsm_data_{split}", [
            {"question": f"Tom has {i} apples and buys 2 more. How many now?",
             "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(size)
        ])  # fmt: skip
    for category in BBQ_CATEGORIES:
        _jsonl(root / "bbq" / "data" / category, [
            {"example_id": i, "question_index": str(i),
             "question_polarity": ["neg", "nonneg"][i % 2],
             "context_condition": ["ambig", "disambig"][i % 2], "category": category,
             "answer_info": {"ans0": ["A", "x"], "ans1": ["B", "y"],
                             "ans2": ["Unknown", "unknown"]},
             "additional_metadata": {"subcategory": "None", "stereotyped_groups": ["x"],
                                     "version": "a", "source": "tiny"},
             "context": f"{category} context {i}.", "question": "Who did it?",
             "ans0": "A", "ans1": "B", "ans2": "Unknown", "label": i % 3}
            for i in range(2)
        ])  # fmt: skip
    splits = {
        name: [{"article": _text(60, i), "highlights": _text(12, i + 1)} for i in range(count)]
        for name, count in (("train", 8), ("validation", 2), ("test", size))
    }
    (root / "summarization" / "data").mkdir(parents=True, exist_ok=True)
    (root / "summarization" / "data" / "cnndm.pk").write_bytes(pickle.dumps(splits))
    return root


def write_closed_sources(root: Path, *, size: int = 6) -> dict[str, Path]:
    """Each closed-stage task's public release, `size` examples each; returns the sources."""
    samsum = root / "samsum" / "test.json"
    samsum.parent.mkdir(parents=True, exist_ok=True)
    samsum.write_text(json.dumps([
        {"id": f"1371{i}", "summary": f"Amanda will bring {i} cookies.",
         "dialogue": f"Amanda: I baked cookies.\r\nJerry: Bring {i}!\r\nAmanda: OK :)"}
        for i in range(size)
    ]))  # fmt: skip
    corr2cause = root / "corr2cause" / "test.csv"
    _csv(corr2cause, [["input", "label"]] + [
        [f"Premise: A correlates with B{i}. Hypothesis: A causes B{i}.", str(i % 2)]
        for i in range(size)
    ])  # fmt: skip
    ethics = root / "ethics" / "commonsense" / "cm_test.csv"
    _csv(ethics, [["label", "input", "is_short", "edited"]] + [
        [str(i % 2), f"I {'helped' if i % 2 == 0 else 'hit'} my neighbour {i}.", "True", "False"]
        for i in range(size)
    ])  # fmt: skip
    math = root / "MATH" / "test"
    for i in range(size):
        subject = ("algebra", "prealgebra")[i % 2]
        solution = f"${i} + {i} = \\boxed{{{2 * i}}}$."
        problem = {"problem": f"What is ${i} + {i}$?", "level": f"Level {1 + i % 5}",
                   "type": subject.title(), "solution": solution}  # fmt: skip
        (math / subject).mkdir(parents=True, exist_ok=True)
        (math / subject / f"{i}.json").write_text(json.dumps(problem))
    return {"samsum": samsum, "corr2cause": corr2cause, "ethics": ethics, "math": math}
