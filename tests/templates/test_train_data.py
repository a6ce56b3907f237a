"""data.py: format conversion, curation counts (empty, long, duplicates, contamination), mixture."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
sys.path.insert(0, str(TRAIN_DIR))

import data  # noqa: E402
from config import ConfigError, from_dict  # noqa: E402

VOCAB = [f"w{i}" for i in range(300)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config_for(*datasets: dict[str, Any], **changes: Any) -> Any:
    return from_dict({"track": "4090", "base_model": "./m", "datasets": list(datasets), **changes})


def load(path: Path, fmt: str) -> list[data.Example]:
    spec = config_for({"source": str(path), "format": fmt}).datasets[0]
    examples: list[data.Example] = data.convert(data.read_rows(spec), spec)
    return examples


@pytest.mark.parametrize(
    ("fmt", "row", "prompt", "response"),
    [
        (
            "alpaca",
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            "Add\n\n2 and 3",
            "5",
        ),
        ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, "Say hi", "hi"),
        (
            "dolly",
            {"instruction": "Sum", "context": "2, 3", "response": "5", "category": "qa"},
            "Sum\n\n2, 3",
            "5",
        ),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": "system", "value": "be brief"},
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                ]
            },
            "be brief\n\nhi",  # the system prompt leads the prompt
            "hello",
        ),
        (
            "sharegpt",
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "gpt", "value": "b"},
                    {"from": "human", "value": "c"},
                    {"from": "gpt", "value": "d"},
                ]
            },
            "User: a\n\nAssistant: b\n\nUser: c",
            "d",
        ),
        (
            "oasst",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "q",
            "a",
        ),
        ("oasst", {"text": "### Human: why?### Assistant: because."}, "why?", "because."),
        ("lima", {"conversations": ["question", "answer"]}, "question", "answer"),
        ("prompt-completion", {"prompt": " 2+3= ", "completion": "5"}, "2+3=", "5"),
    ],
)
def test_each_format_converts(
    tmp_path: Path, fmt: str, row: dict[str, Any], prompt: str, response: str
) -> None:
    [example] = load(write_jsonl(tmp_path / "d.jsonl", [row]), fmt)
    assert (example.prompt, example.response) == (prompt, response)


def test_json_and_parquet_files_load_like_jsonl(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps({"train": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    expected = load(write_jsonl(tmp_path / "d.jsonl", rows), "prompt-completion")
    for name in ("d.json", "d.parquet"):
        got = load(tmp_path / name, "prompt-completion")
        assert [(e.prompt, e.response) for e in got] == [(e.prompt, e.response) for e in expected]


def test_malformed_inputs_are_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"x": 1}])
    with pytest.raises(
        ConfigError, match=r"record 2 does not look like format 'alpaca'.*'instruction'"
    ):
        load(path, "alpaca")
    path.write_text('{"prompt": "a", "completion": "b"}\n{not json}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not valid JSON"):
        load(path, "prompt-completion")
    with pytest.raises(ConfigError, match="unsupported file type"):
        load(write_jsonl(tmp_path / "d.csv", []), "alpaca")
    with pytest.raises(ConfigError, match="no such file or folder"):
        load(tmp_path / "missing.jsonl", "alpaca")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def test_curation_counts_are_exact(tmp_path: Path) -> None:
    rng = random.Random(0)
    unique = [{"instruction": sentence(rng, 20), "output": sentence(rng, 40)} for _ in range(40)]
    exact = [  # case, spacing and punctuation changes only
        {"instruction": u["instruction"].upper() + " !", "output": "  " + u["output"]}
        for u in unique[:4]
    ]
    near = []  # one word of the response changed
    for u in unique[4:7]:
        words = u["output"].split()
        words[20] = "changed"
        near.append({"instruction": u["instruction"], "output": " ".join(words)})
    empty = [{"instruction": "a question", "output": " "}, {"instruction": "  ", "output": "x"}]
    too_long = [{"instruction": sentence(rng, 10), "output": sentence(rng, 500)}]
    rows = [*unique, *exact, *near, *empty, *too_long]
    assert len(rows) == 50
    rng.shuffle(rows[40:])

    def words_of(i: int, start: int, n: int) -> str:
        return " ".join(
            (unique[i]["instruction"] + " " + unique[i]["output"]).split()[start : start + n]
        )

    evals: list[dict[str, Any]] = [
        {"prompt": "Context: " + words_of(10, 5, 13) + " ?"},  # 13 shared words: contaminated
        {"prompt": words_of(11, 18, 20)},  # spans prompt and response: contaminated
        {"question": "q", "references": ["A. " + words_of(12, 25, 13)]},  # any string field
        {"prompt": words_of(13, 0, 12)},  # 12 shared words only: kept
    ]
    config = config_for(
        {"source": str(write_jsonl(tmp_path / "train.jsonl", rows)), "format": "alpaca"},
        curation={"decontaminate": [str(write_jsonl(tmp_path / "eval.jsonl", evals))]},
    )
    examples, report = data.prepare(config, lambda e: len(e.response.split()) > 200)

    assert report["total"] == {
        "loaded": 50,
        "empty": 2,
        "too_long": 1,
        "exact_duplicate": 4,
        "near_duplicate": 3,
        "contaminated": 3,
        "kept": 37,
        "sampled": 37,
    }
    kept = {e.prompt for e in examples}
    assert {u["instruction"] for u in unique[:10] + unique[14:]} <= kept
    assert not {u["instruction"] for u in unique[10:13]} & kept


def test_duplicates_across_datasets_keep_the_first_listed(tmp_path: Path) -> None:
    rows = [{"prompt": f"same question {i}", "completion": f"same answer {i}"} for i in range(5)]
    first = write_jsonl(tmp_path / "first.jsonl", rows)
    second = write_jsonl(
        tmp_path / "second.jsonl", [*rows[:3], {"prompt": "new", "completion": "x"}]
    )
    config = config_for(
        {"source": str(first), "format": "prompt-completion"},
        {"source": str(second), "format": "prompt-completion"},
    )
    _, report = data.prepare(config, lambda _: False)
    assert report["datasets"][str(first)].get("exact_duplicate", 0) == 0
    assert report["datasets"][str(second)]["exact_duplicate"] == 3
    assert report["total"]["sampled"] == 6


def test_seeded_mixture_by_weight_and_max_samples(tmp_path: Path) -> None:
    def dataset(name: str, n: int) -> str:
        rows = [
            {"prompt": f"{name} prompt {i}", "completion": f"{name} answer {i}"} for i in range(n)
        ]
        return str(write_jsonl(tmp_path / f"{name}.jsonl", rows))

    specs = [
        {"source": dataset("a", 20), "format": "prompt-completion", "max_samples": 5},
        {"source": dataset("b", 10), "format": "prompt-completion", "weight": 2.0},
        {"source": dataset("c", 10), "format": "prompt-completion", "weight": 0.5},
        {"source": dataset("d", 3), "format": "prompt-completion", "max_samples": 50},
    ]
    examples, report = data.prepare(config_for(*specs, seed=1), lambda _: False)
    sampled = [report["datasets"][s["source"]]["sampled"] for s in specs]
    assert sampled == [5, 20, 5, 3] and len(examples) == 33
    again, _ = data.prepare(config_for(*specs, seed=1), lambda _: False)
    other, _ = data.prepare(config_for(*specs, seed=2), lambda _: False)
    assert again == examples and other != examples


def test_report_is_printed_and_saved_with_the_curated_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": "p", "completion": "c"}] * 3 + [{"prompt": "q", "completion": ""}]
    config = config_for(
        {"source": str(write_jsonl(tmp_path / "d.jsonl", rows)), "format": "prompt-completion"},
        output_dir=str(tmp_path / "out"),
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump()))
    result = subprocess.run(
        [sys.executable, "data.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "total: 4 | 1 | 0 | 2 | 0 | 0 | 1 | 1" in result.stdout
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["total"]["exact_duplicate"] == 2 and report["total"]["empty"] == 1
    curated = (tmp_path / "out" / "curated.jsonl").read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in curated] == ["p"]
