"""HELM plugin: evaluation tasks read from a local JSONL file (organizers' held-out tasks).

Loaded by helm-run with `--plugins PATH/TO/local_tasks.py`; it runs inside `.venv-helm`, where the
`harness` package is not installed, so it imports only HELM and the standard library.

Run entry: `local_task:path=/abs/tasks.jsonl[,name=NAME][,num_train_instances=N][,max_tokens=N]`
(the harness resolves a relative `path` against the folder of the conf that names it). Each line of
the file is one instance, all of one kind:

    {"question": "2 + 2 = ?", "choices": ["3", "4", "5"], "answer": 1}     multiple choice
    {"input": "Capital of France?", "answer": "Paris"}                    generation
    {"input": "...", "answer": ["colour", "color"]}                       generation, any answer

`answer` is the index of the correct choice (multiple choice) or the accepted outputs (generation).
An optional `"split": "train"` makes a line an in-context example instead of a test instance.
Both kinds report HELM's `quasi_exact_match` (exact match after normalising case, whitespace and
punctuation), the harness's main metric for local tasks.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from helm.benchmark.adaptation.adapter_spec import ADAPT_MULTIPLE_CHOICE_JOINT
from helm.benchmark.adaptation.common_adapter_specs import (
    get_generation_adapter_spec,
    get_multiple_choice_adapter_spec,
)
from helm.benchmark.metrics.common_metric_specs import (
    get_exact_match_metric_specs,
    get_f1_metric_specs,
)
from helm.benchmark.run_spec import RunSpec, run_spec_function
from helm.benchmark.scenarios.scenario import (
    CORRECT_TAG,
    TEST_SPLIT,
    TRAIN_SPLIT,
    VALID_SPLIT,
    Input,
    Instance,
    Output,
    Reference,
    Scenario,
    ScenarioSpec,
)

SPLITS = (TRAIN_SPLIT, VALID_SPLIT, TEST_SPLIT)


def read_task(path: str) -> tuple[bool, list[dict[str, Any]]]:
    """The file's rows and whether they are multiple choice; malformed rows fail with their line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            where = f"{path}:{number}"
            if not isinstance(row, dict) or "answer" not in row:
                raise ValueError(f"{where}: expected a JSON object with an 'answer'")
            if row.get("split", TEST_SPLIT) not in SPLITS:
                raise ValueError(f"{where}: split must be one of {SPLITS}")
            if "choices" in row:
                choices, answer = row["choices"], row["answer"]
                if not isinstance(row.get("question"), str) or not isinstance(choices, list):
                    raise ValueError(f"{where}: needs a 'question' string and a 'choices' list")
                if not isinstance(answer, int) or not 0 <= answer < len(choices):
                    raise ValueError(f"{where}: 'answer' must index one of {len(choices)} choices")
            elif not isinstance(row.get("input"), str) or not row["answer"]:
                raise ValueError(f"{where}: a generation row needs an 'input' and an 'answer'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no instances")
    kinds = {"choices" in row for row in rows}
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes multiple-choice and generation rows")
    return kinds.pop(), rows


def to_instance(row: dict[str, Any], multiple_choice: bool) -> Instance:
    split = row.get("split", TEST_SPLIT)
    if multiple_choice:
        references = [
            Reference(Output(text=str(choice)), tags=[CORRECT_TAG] if i == row["answer"] else [])
            for i, choice in enumerate(row["choices"])
        ]
        return Instance(Input(text=row["question"]), references=references, split=split)
    answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
    references = [Reference(Output(text=str(answer)), tags=[CORRECT_TAG]) for answer in answers]
    return Instance(Input(text=row["input"]), references=references, split=split)


class LocalTaskScenario(Scenario):  # type: ignore[misc]  # HELM ships no type information
    name = "local_task"
    description = "Instances read from a local JSONL file"
    tags: ClassVar[list[str]] = ["local"]

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def get_instances(self, output_path: str) -> list[Instance]:
        multiple_choice, rows = read_task(self.path)
        return [to_instance(row, multiple_choice) for row in rows]


@run_spec_function("local_task")  # type: ignore[untyped-decorator]
def get_local_task_spec(
    path: str, name: str = "", num_train_instances: int = 0, max_tokens: int = 20
) -> RunSpec:
    multiple_choice, _ = read_task(path)
    task = name or os.path.splitext(os.path.basename(path))[0]
    if multiple_choice:
        adapter_spec = get_multiple_choice_adapter_spec(
            method=ADAPT_MULTIPLE_CHOICE_JOINT,
            instructions="Answer the following questions with a single letter only.",
            input_noun="Question",
            output_noun="Answer",
            max_train_instances=num_train_instances,
        )
        metric_specs = get_exact_match_metric_specs()
    else:
        adapter_spec = get_generation_adapter_spec(
            instructions="Answer the following questions briefly.",
            input_noun="Question",
            output_noun="Answer",
            max_train_instances=num_train_instances,
            max_tokens=max_tokens,
        )
        metric_specs = get_f1_metric_specs()
    return RunSpec(
        # The path stays out of the name: HELM makes a folder of it, and slashes would nest it.
        name=f"local_task:name={task}",
        scenario_spec=ScenarioSpec(class_name=f"{__name__}.LocalTaskScenario", args={"path": path}),
        adapter_spec=adapter_spec,
        metric_specs=metric_specs,
        groups=[f"local_task_{task}"],
    )
