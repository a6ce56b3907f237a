"""HELM plugin: evaluation tasks read from a local JSONL file (organizers' held-out tasks).

Loaded by helm-run with `--plugins PATH/TO/local_tasks.py`; it runs inside `.venv-helm`, where the
`harness` package is not installed, so it imports only HELM and the standard library.

Run entry: `local_task:path=/abs/tasks.jsonl[,name=NAME][,num_train_instances=N][,max_tokens=N]
[,scoring=exact|rouge|math]` (the harness resolves a relative `path` against the folder of the conf
that names it). Each line of the file is one instance, all of one kind:

    {"question": "2 + 2 = ?", "choices": ["3", "4", "5"], "answer": 1}     multiple choice
    {"input": "Capital of France?", "answer": "Paris"}                    generation
    {"input": "...", "answer": ["colour", "color"]}                       generation, any answer

`answer` is the index of the correct choice (multiple choice) or the accepted outputs (generation).
An optional `"split": "train"` makes a line an in-context example instead of a test instance.
Both kinds report HELM's `quasi_exact_match` (exact match after normalising case, whitespace and
punctuation), the harness's main metric for local tasks. Generation tasks may be scored otherwise
(`SCORINGS`): `rouge` reports HELM's `rouge_2` and `rouge_l` (summaries: SAMSum), `math` HELM
MATH's `math_equiv_chain_of_thought` (the last `\\boxed{...}` of the output and of the reference
solution, compared after MATH's own normalisation).

It also registers `summarization_cnndm_rouge`: HELM's CNN/DailyMail run spec (its scenario,
prompt and sampling) with ROUGE alone, because HELM's summarization metric loads BERTScore,
SummaC and spaCy models and downloads human-evaluation files, none of which the ranking reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

from helm.benchmark.adaptation.adapter_spec import ADAPT_MULTIPLE_CHOICE_JOINT
from helm.benchmark.adaptation.common_adapter_specs import (
    get_generation_adapter_spec,
    get_multiple_choice_adapter_spec,
)
from helm.benchmark.metrics.common_metric_specs import (
    get_basic_metric_specs,
    get_exact_match_metric_specs,
    get_f1_metric_specs,
)
from helm.benchmark.run_spec import RunSpec, run_spec_function
from helm.benchmark.run_specs.classic_run_specs import get_cnndm_summarization_spec
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
ROUGE = ["rouge_1", "rouge_2", "rouge_l"]
# Generation scorings: instructions, input and output nouns, stop sequences, metric names (none:
# HELM's exact-match family). Summaries and worked solutions span lines: they stop at a blank one.
SCORINGS: dict[str, tuple[str, str, str, list[str] | None, list[str]]] = {
    "exact": ("Answer the following questions briefly.", "Question", "Answer", None, []),
    "rouge": ("Summarize the following text briefly.", "Text", "Summary", ["\n\n"], ROUGE),
    "math": (
        "Solve the problem step by step. Put the final answer in \\boxed{}.",
        "Problem",
        "Solution",
        ["\n\n"],
        ["math_equiv_chain_of_thought"],
    ),
}


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
    path: str,
    name: str = "",
    num_train_instances: int = 0,
    max_tokens: int = 20,
    scoring: str = "exact",
) -> RunSpec:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring}: choose one of {', '.join(SCORINGS)}")
    multiple_choice, _ = read_task(path)
    if multiple_choice and scoring != "exact":
        raise ValueError(f"{path}: scoring={scoring} is for generation tasks, not multiple choice")
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
        instructions, input_noun, output_noun, stop, metrics = SCORINGS[scoring]
        adapter_spec = get_generation_adapter_spec(
            instructions=instructions,
            input_noun=input_noun,
            output_noun=output_noun,
            max_train_instances=num_train_instances,
            max_tokens=max_tokens,
            stop_sequences=stop,
        )
        metric_specs = get_basic_metric_specs(metrics) if metrics else get_f1_metric_specs()
    return RunSpec(
        # The path stays out of the name: HELM makes a folder of it, and slashes would nest it.
        name=f"local_task:name={task}",
        scenario_spec=ScenarioSpec(class_name=f"{__name__}.LocalTaskScenario", args={"path": path}),
        adapter_spec=adapter_spec,
        metric_specs=metric_specs,
        groups=[f"local_task_{task}"],
    )


@run_spec_function("summarization_cnndm_rouge")  # type: ignore[untyped-decorator]
def get_cnndm_rouge_spec(temperature: float = 0.3) -> RunSpec:
    helm_spec = get_cnndm_summarization_spec(temperature=temperature)
    return dataclasses.replace(
        helm_spec,
        name=f"summarization_cnndm_rouge:temperature={temperature}",
        metric_specs=get_basic_metric_specs(ROUGE),
    )
