"""`harness tasks import`: the closed stage's public releases into local task files.

The sources are written by the test in each task's public format (tests/harness/helm/raw_tasks.py);
the converted files are then read by the HELM plugin's own reader (`read_task`), run in
.venv-helm, so the JSONL is checked by what consumes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.helm.runner import PLUGIN
from harness.helm.tasks import CORR2CAUSE_QUESTION, ETHICS_QUESTION, import_task
from tests.harness.helm.raw_tasks import write_closed_sources


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return write_closed_sources(tmp_path / "sources", size=4)


def test_samsum_becomes_generation_with_the_summary_as_reference(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    assert import_task("samsum", sources["samsum"], tmp_path / "samsum.jsonl") == 4
    first = _rows(tmp_path / "samsum.jsonl")[0]
    assert first == {
        "input": "Amanda: I baked cookies.\nJerry: Bring 0!\nAmanda: OK :)",
        "answer": ["Amanda will bring 0 cookies."],
    }


@pytest.mark.parametrize(
    ("kind", "question", "labels"),
    [("corr2cause", CORR2CAUSE_QUESTION, [0, 1, 0, 1]), ("ethics", ETHICS_QUESTION, [0, 1, 0, 1])],
)
def test_csv_tasks_become_yes_no_multiple_choice(
    sources: dict[str, Path], tmp_path: Path, kind: str, question: str, labels: list[int]
) -> None:
    out = tmp_path / f"{kind}.jsonl"
    assert import_task(kind, sources[kind], out) == 4
    rows = _rows(out)
    assert [row["answer"] for row in rows] == labels
    assert all(row["choices"] == ["No", "Yes"] for row in rows)
    assert all(str(row["question"]).endswith("\n" + question) for row in rows)


def test_math_folders_become_generation_with_the_worked_solution(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    assert import_task("math", sources["math"], tmp_path / "math.jsonl") == 4
    rows = _rows(tmp_path / "math.jsonl")
    # Path order: algebra/0, algebra/2, prealgebra/1, prealgebra/3.
    assert [row["input"] for row in rows][:2] == ["What is $0 + 0$?", "What is $2 + 2$?"]
    assert rows[1]["answer"] == ["$2 + 2 = \\boxed{4}$."]


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("samsum", '{"not": "a list"}', "expected SAMSum's list"),
        ("samsum", '[{"dialogue": "A: hi"}]', "item 0 needs a 'dialogue' and a 'summary'"),
        ("samsum", "[", "cannot read it as JSON"),
        ("corr2cause", "text,label\nx,1\n", "no column input in the header"),
        ("corr2cause", "input,label\nx,2\n", r"bad.csv:2: label must be 0 or 1"),
        ("ethics", "label,input\nyes,x\n", r"bad.csv:2: label must be 0 or 1"),
        ("ethics", "label,input\n", "no examples"),
    ],
)
def test_bad_sources_are_refused_with_where_and_why(
    tmp_path: Path, kind: str, content: str, message: str
) -> None:
    source = tmp_path / ("bad.json" if kind == "samsum" else "bad.csv")
    source.write_text(content)
    with pytest.raises(ConfigError, match=message):
        import_task(kind, source, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_math_without_a_boxed_answer_or_problems_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a folder of MATH problem \.json files"):
        import_task("math", tmp_path, tmp_path / "out.jsonl")
    (tmp_path / "test" / "algebra").mkdir(parents=True)
    (tmp_path / "test" / "algebra" / "1.json").write_text('{"problem": "x", "solution": "2"}')
    with pytest.raises(ConfigError, match=r"1.json: needs .* \\boxed answer"):
        import_task("math", tmp_path, tmp_path / "out.jsonl")


def test_cli_imports_and_refuses_unknown_tasks(sources: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "closed" / "samsum.jsonl"
    result = runner.invoke(app, ["tasks", "import", "samsum", str(sources["samsum"]),
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 4 samsum instances" in result.output and len(_rows(out)) == 4
    result = runner.invoke(app, ["tasks", "import", "squad", str(out), "--out", str(out)])
    assert result.exit_code == 2 and "unknown task 'squad'" in result.output


@pytest.mark.helm
def test_converted_files_load_in_the_helm_plugin(
    sources: dict[str, Path], tmp_path: Path, helm_bin: Path
) -> None:
    from tests.harness.helm.test_runner import helm_python

    paths = {}
    for kind, source in sources.items():
        paths[kind] = str(tmp_path / f"{kind}.jsonl")
        import_task(kind, source, Path(paths[kind]))
    out = helm_python(
        helm_bin,
        f"""
        import json, sys
        sys.path.insert(0, {str(PLUGIN.parent)!r})
        from local_tasks import read_task
        print(json.dumps({{k: read_task(p)[0] for k, p in {paths!r}.items()}}))
        """,
    )
    kinds = json.loads(out.splitlines()[-1])
    assert kinds == {"samsum": False, "corr2cause": True, "ethics": True, "math": False}
