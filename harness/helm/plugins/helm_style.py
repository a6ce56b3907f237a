"""Training rows shaped like HELM's requests, made by HELM's own scenario and adapter code (run by
harness/helm/style.py).

Runs inside `.venv-helm`, where the `harness` package is not installed, so it imports only HELM
and the standard library:

    cd STAGING && python helm_style.py REQUEST.json RESULT.jsonl

REQUEST: {"data_dir": DIR, "plugins": [PATH, ...], "description": "mmlu:subject=anatomy",
          "split": "train", "shots": K or null, "seed": S}
DIR has the layout of HELM's `benchmark_output/scenarios/`. RESULT: one JSON object per instance
of `split`, in the scenario's order:

    {"prompt": the text HELM's adapter sends for it, "completion": the answer HELM counts as right
     (a multiple-choice letter, else the first correct reference), "scenario": run-spec name}

and a last line {"summary": {...}} (run spec, adapter method, counts, shots).

Each prompt is built as HELM builds an evaluation request: the run spec's instructions, K
in-context examples from the scenario's train split (K = the run spec's own count unless `shots`
is given) chosen by HELM's `sample_examples`, then the instance with its output prefix
(`Answer:`). Two differences, both because a row is training data: every row draws its own
examples (seeded by `seed` and the row's index) from the train split without the row's own
instance, where an evaluation shares one draw across all instances; and nothing is cut to a
context window, which is the trainer's to enforce (train.py drops over-long rows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import tempfile
from typing import Any

from helm.benchmark.adaptation.adapter_spec import (
    ADAPT_GENERATION,
    ADAPT_MULTIPLE_CHOICE_JOINT,
)
from helm.benchmark.adaptation.adapters.adapter_factory import AdapterFactory
from helm.benchmark.adaptation.adapters.in_context_learning_adapter import (
    InContextLearningAdapter,
)
from helm.benchmark.config_registry import register_builtin_configs_from_helm_package
from helm.benchmark.run import import_user_plugins
from helm.benchmark.runner import set_benchmark_output_path
from helm.benchmark.scenarios.scenario import (
    TRAIN_SPLIT,
    Instance,
    create_scenario,
    get_scenario_cache_path,
)
from sample_instances import _without_model, one_run_spec  # beside this file: the pack sampler

SUPPORTED = (ADAPT_GENERATION, ADAPT_MULTIPLE_CHOICE_JOINT)
# Per-row examples are drawn from a random pool of this many train instances: HELM's sampler
# walks its whole pool for every row, which over MMLU's auxiliary train set (~100K rows) would be
# quadratic; 32 still lets it balance the labels of a few shots.
POOL = 32


def _adapter(description: str) -> tuple[Any, InContextLearningAdapter]:
    run_spec = one_run_spec(description)
    method = run_spec.adapter_spec.method
    if method not in SUPPORTED:
        raise ValueError(f"{description}: HELM adapts it by {method!r}; supported: {SUPPORTED}")
    # No tokenizer service: the window service is only asked to fit prompts, which is skipped.
    adapter = AdapterFactory.get_adapter(run_spec.adapter_spec, None)
    adapter._make_prompt_fit = lambda prompt: prompt
    return run_spec, adapter


def _completion(adapter: InContextLearningAdapter, instance: Instance) -> str:
    """What follows the prompt in HELM's own rendering of the instance as an in-context example,
    without the example's separator: the letter (multiple choice) or the reference text."""
    spec = adapter.adapter_spec
    shown: str = adapter.construct_example_prompt(instance, True, None)
    asked: str = adapter.construct_example_prompt(instance, False, None)
    if not shown.startswith(asked):
        raise ValueError("the adapter renders an example's input differently with its output")
    answer = shown[len(asked) :]
    if spec.output_suffix and answer.endswith(spec.output_suffix):
        answer = answer[: -len(spec.output_suffix)]
    return answer.strip()


def shape(request: dict[str, Any], output_path: str, out: Any) -> dict[str, Any]:
    run_spec, adapter = _adapter(request["description"])
    spec = adapter.adapter_spec
    if request["shots"] is not None:
        spec = adapter.adapter_spec = dataclasses.replace(
            spec, max_train_instances=request["shots"]
        )
    scenario = create_scenario(run_spec.scenario_spec)
    instances = scenario.get_instances(get_scenario_cache_path(output_path, scenario.name))
    splits = sorted({instance.split for instance in instances})
    targets = [instance for instance in instances if instance.split == request["split"]]
    if not targets:
        raise ValueError(
            f"{request['description']}: no instances in split {request['split']!r} "
            f"(the data has {', '.join(splits) or 'no instances'})"
        )
    train = [instance for instance in instances if instance.split == TRAIN_SPLIT]
    name = _without_model(run_spec.name)
    shots = 0
    position = {id(instance): i for i, instance in enumerate(train)}
    for index, instance in enumerate(targets):
        draw = random.Random(f"{request['seed']}:{index}")
        picked = draw.sample(range(len(train)), min(POOL + 1, len(train)))
        pool = [train[i] for i in picked if i != position.get(id(instance))][:POOL]
        examples = (
            adapter.sample_examples(pool, seed=draw.randrange(2**31), sample_train=True)
            if spec.max_train_instances > 0
            else []
        )
        shots = max(shots, len(examples))
        prompt = adapter.construct_prompt(examples, instance, False, None).text
        row = {"prompt": prompt, "completion": _completion(adapter, instance), "scenario": name}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {
        "run_spec": name,
        "method": spec.method,
        "rows": len(targets),
        "split": request["split"],
        "splits": splits,
        "train_instances": len(train),
        "shots": shots,
        "max_train_instances": spec.max_train_instances,
    }


def main() -> None:
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    register_builtin_configs_from_helm_package()
    import_user_plugins(request["plugins"])
    with (
        tempfile.TemporaryDirectory(prefix="helm-style-") as output_path,
        open(result_path, "w", encoding="utf-8") as out,
    ):
        # Run-spec functions (BIG-bench's) and scenarios read `benchmark_output/scenarios/`.
        os.symlink(os.path.abspath(request["data_dir"]), os.path.join(output_path, "scenarios"))
        set_benchmark_output_path(output_path)
        try:
            summary = shape(request, output_path, out)
        except Exception as exc:  # reported with the scenario it belongs to
            summary = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps({"summary": summary}) + "\n")


if __name__ == "__main__":
    main()
