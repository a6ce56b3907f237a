"""data.py on real sources: field maps, data sets with a config name and split (a local folder in
the hub's layout: nothing is downloaded), OpenAssistant's message trees, sources that give
nothing, and near-duplicate removal on templated task data."""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
sys.path.insert(0, str(TRAIN_DIR))

import data  # noqa: E402
from config import ConfigError, from_dict  # noqa: E402


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(
    *datasets: dict[str, Any], **changes: Any
) -> tuple[list[data.Example], dict[str, Any]]:
    config = from_dict(
        {"track": "4090", "base_model": "./m", "datasets": list(datasets), **changes}
    )
    prepared: tuple[list[data.Example], dict[str, Any]] = data.prepare(config, lambda _: False)
    return prepared


def pairs(examples: list[data.Example]) -> set[tuple[str, str]]:
    return {(e.prompt, e.response) for e in examples}


def test_a_field_map_reads_any_row_shape_and_keeps_the_system_prompt(tmp_path: Path) -> None:
    orca = write_jsonl(tmp_path / "orca.jsonl", [
        {"id": "1", "system_prompt": "You are terse.", "question": "2+2?", "response": "4"},
        {"id": "2", "system_prompt": "", "question": "3+3?", "response": "6"},
    ])  # fmt: skip
    cnndm = write_jsonl(tmp_path / "cnndm.jsonl", [
        {"id": "a", "title": "Storm", "article": "A storm hit the coast.", "highlights": "Storm."},
    ])  # fmt: skip
    examples, report = prepared(
        {"source": str(orca), "fields": {"prompt": "question", "completion": "response",
                                         "system": "system_prompt"}},
        {"source": str(cnndm), "fields": {"prompt": ["title", "article"],
                                          "completion": "highlights"}},
    )  # fmt: skip
    assert pairs(examples) == {
        ("You are terse.\n\n2+2?", "4"),
        ("3+3?", "6"),
        ("Storm\n\nA storm hit the coast.", "Storm."),
    }
    assert report["total"]["sampled"] == 3
    with pytest.raises(ConfigError, match=r"record 1 does not look like the fields .*'question'"):
        prepared({"source": str(cnndm), "fields": {"prompt": "question", "completion": "x"}})
    with pytest.raises(ConfigError, match="give `format` or a `fields` map"):
        fields = {"prompt": "a", "completion": "b"}
        prepared({"source": str(cnndm), "format": "alpaca", "fields": fields})


def write_hub_layout(root: Path) -> Path:
    """A data set folder laid out like gsm8k's hub repository: a README whose YAML names the
    configs (`main`, `socratic`), each with parquet files per split."""
    configs = []
    for config in ("main", "socratic"):
        files = []
        for split, count in (("train", 4), ("test", 2)):
            rows = [
                {"question": f"{config} {split} question {i}?", "answer": f"{i}\n#### {i}"}
                for i in range(count)
            ]
            (root / config).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), root / config / f"{split}-00000.parquet")
            files.append(f"  - split: {split}\n    path: {config}/{split}-*.parquet")
        configs.append(f"- config_name: {config}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return root


def test_a_data_set_loads_by_config_name_and_split(tmp_path: Path) -> None:
    folder = write_hub_layout(tmp_path / "gsm8k")
    fields = {"prompt": "question", "completion": "answer"}
    examples, _ = prepared({"source": str(folder), "name": "socratic", "split": "test",
                            "fields": fields})  # fmt: skip
    assert {e.prompt for e in examples} == {
        "socratic test question 0?",
        "socratic test question 1?",
    }
    examples, _ = prepared({"source": str(folder), "name": "main", "fields": fields})
    assert len(examples) == 4 and all(e.prompt.startswith("main train") for e in examples)
    with pytest.raises(ConfigError, match=r"gsm8k.*config 'main', split 'validation'"):
        prepared({"source": str(folder), "name": "main", "split": "validation", "fields": fields})
    with pytest.raises(ConfigError, match=r"config 'nosuch'"):
        prepared({"source": str(folder), "name": "nosuch", "fields": fields})
    with pytest.raises(ConfigError, match=r"must be pinned: owner/name@<commit sha>"):
        prepared({"source": "openai/gsm8k", "name": "main", "fields": fields})


def message(mid: str, parent: str | None, role: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"message_id": mid, "parent_id": parent, "message_tree_id": "t", "role": role,
            "text": text, "lang": "en", "deleted": False, "review_result": True, "rank": None,
            **extra}  # fmt: skip


# One OASST1 tree: a question with two ranked answers, a follow-up under the better one with
# its own answer, a deleted answer and one that failed review (with a reply of its own).
OASST_ROWS = [
    message("q1", None, "prompter", "What is a prime?"),
    message("a1", "q1", "assistant", "A number with two divisors.", rank=0),
    message("a2", "q1", "assistant", "Dunno.", rank=1),
    message("q2", "a1", "prompter", "Is 1 prime?", rank=0),
    message("a3", "q2", "assistant", "No: it has one divisor.", rank=0),
    message("a4", "q2", "assistant", "Deleted answer.", rank=1, deleted=True),
    message("q3", "a2", "prompter", "Why not?"),
    message("r1", None, "prompter", "Say hi."),
    message("b1", "r1", "assistant", "Spam.", review_result=False),
    message("b2", "b1", "prompter", "Hm?"),
]
OASST_EXAMPLES = {
    ("What is a prime?", "A number with two divisors."),
    (
        "User: What is a prime?\n\nAssistant: A number with two divisors.\n\nUser: Is 1 prime?",
        "No: it has one divisor.",
    ),
}


def nested(rows: list[dict[str, Any]], root: str) -> dict[str, Any]:
    """OASST's tree export: each message holds its `replies`."""

    def build(mid: str) -> dict[str, Any]:
        row = next(r for r in rows if r["message_id"] == mid)
        replies = [build(r["message_id"]) for r in rows if r["parent_id"] == mid]
        return {**{k: v for k, v in row.items() if k != "parent_id"}, "replies": replies}

    return {"message_tree_id": root, "tree_state": "ready_for_export", "prompt": build(root)}


def test_openassistant_message_trees_become_conversations(tmp_path: Path) -> None:
    flat = write_jsonl(tmp_path / "oasst1.jsonl", OASST_ROWS)
    pq.write_table(pa.Table.from_pylist(OASST_ROWS), tmp_path / "oasst1.parquet")
    trees = write_jsonl(tmp_path / "trees.jsonl", [nested(OASST_ROWS, "q1"),
                                                   nested(OASST_ROWS, "r1")])  # fmt: skip
    for path in (flat, tmp_path / "oasst1.parquet", trees):
        examples, report = prepared({"source": str(path), "format": "oasst"})
        assert pairs(examples) == OASST_EXAMPLES, path
        assert report["total"]["loaded"] == 2
    questions = [row for row in OASST_ROWS if row["role"] == "prompter"]
    prompts_only = write_jsonl(tmp_path / "prompts.jsonl", questions)
    with pytest.raises(ConfigError, match=r"prompts.jsonl: none of its 5 rows gives a prompt"):
        prepared({"source": str(prompts_only), "format": "oasst"})


def test_a_source_that_gives_no_usable_example_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty.jsonl: no rows \(split 'train'\)"):
        prepared({"source": str(empty), "format": "alpaca"})
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "q", "completion": ""}] * 3)
    with pytest.raises(ConfigError, match=r"blank.jsonl: none of its 3 rows .* prompt-completion"):
        prepared({"source": str(blank), "format": "prompt-completion"})
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(3)]
    first = write_jsonl(tmp_path / "first.jsonl", rows)
    again = write_jsonl(tmp_path / "again.jsonl", rows)
    with pytest.raises(ConfigError, match=r"again.jsonl: no usable example is left .*"
                       r"exact_duplicate 3"):  # fmt: skip
        prepared({"source": str(first), "format": "prompt-completion"},
                 {"source": str(again), "format": "prompt-completion"})  # fmt: skip


VOCAB = [f"w{i}" for i in range(2000)]


def mmlu_like(rng: random.Random, count: int) -> tuple[list[dict[str, str]], list[str]]:
    """`count` 5-shot multiple-choice rows shaped as HELM asks them: the same instructions and
    the same five in-context examples in every row (as in one evaluation trial), then a question
    of its own; and the questions."""

    def block(question: str, choices: list[str], answer: str = "") -> str:
        lines = [f"Question: {question}"] + [f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices)]
        return "\n".join([*lines, f"Answer:{' ' + answer if answer else ''}"])

    def words(n: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(n))

    instructions = "The following are multiple choice questions (with answers) about anatomy."
    shots = [block(words(25), [words(2) for _ in range(4)], rng.choice("ABCD")) for _ in range(5)]
    questions = [words(25) for _ in range(count)]
    rows = [
        {"prompt": "\n\n".join([instructions, *shots, block(q, [words(2) for _ in range(4)])]),
         "completion": rng.choice("ABCD")}
        for q in questions
    ]  # fmt: skip
    return rows, questions


def test_near_duplicate_removal_keeps_templated_task_data(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows, questions = mmlu_like(rng, 200)
    # Ten rows asked again with the question's last word changed: near duplicates.
    copies = []
    for row, question in zip(rows[:10], questions[:10], strict=True):
        changed = question.split()
        changed[-1] = "changed"
        copies.append({**row, "prompt": row["prompt"].replace(question, " ".join(changed))})
    source = write_jsonl(tmp_path / "mmlu.jsonl", rows + copies)

    # Whole, the rows are alike: they share instructions and examples. Compared whole (the
    # earlier data.py), 82 of 500 such rows were dropped as near duplicates of others.
    whole = [data.MinHasher.shingles(r["prompt"] + "\n" + r["completion"]) for r in rows[:20]]
    similarity = [
        len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for a, b in itertools.pairwise(whole)
    ]
    assert min(similarity) > 0.7

    examples, report = prepared({"source": str(source), "format": "prompt-completion"})
    assert report["total"]["near_duplicate"] == 10 and len(examples) == 200
    assert {e.prompt for e in examples} == {r["prompt"] for r in rows}
