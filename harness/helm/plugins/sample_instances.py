"""Sample an instance pack with HELM's own scenario code (run by harness/helm/packs.py).

Runs inside `.venv-helm`, where the `harness` package is not installed, so it imports only HELM
and the standard library:

    cd STAGING && python sample_instances.py REQUEST.json RESULT.json

REQUEST: {"data_dir": DIR, "plugins": [PATH, ...], "seed": S,
          "entries": [{"description": "mmlu:subject=anatomy", "eval": 10}, ...]}
DIR has the layout of HELM's `benchmark_output/scenarios/` (HELM downloads into it what is
missing, when it can). RESULT: {"helm_version": ..., "entries": [...]}, one object per entry:

    {"run_spec": HELM's run-spec name, "key": the folder `helm-run --cache-instances` reads,
     "available": the scenario's eval instances, "train": in-context examples kept,
     "instances": [train examples..., eval sample...] as HELM writes them}

The eval instances (HELM's eval splits) are shuffled once with `seed` and the first `eval` kept:
the order does not depend on the count, so a smaller sample is a prefix of a larger one. The
train examples are the ones HELM's adapter picks from the whole train split, for every train
trial, so prompts are what they would be without a pack.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import sys
import tempfile
from types import SimpleNamespace
from typing import Any

from helm.benchmark.adaptation.adapters.in_context_learning_adapter import (
    InContextLearningAdapter,
)
from helm.benchmark.config_registry import register_builtin_configs_from_helm_package
from helm.benchmark.run import import_user_plugins
from helm.benchmark.run_spec_factory import construct_run_specs
from helm.benchmark.runner import set_benchmark_output_path
from helm.benchmark.scenarios.scenario import (
    EVAL_SPLITS,
    TRAIN_SPLIT,
    Instance,
    create_scenario,
    get_scenario_cache_path,
)
from helm.common.general import asdict_without_nones
from helm.common.object_spec import parse_object_spec

# construct_run_specs needs a model; a shipped one that changes no scenario argument.
_ANY_MODEL = "simple/model1"


def one_run_spec(description: str) -> Any:
    """The one run spec a run entry (without a model) stands for; ValueError when it expands to
    several (or none)."""
    name, _, args = description.partition(":")
    spec = parse_object_spec(f"{name}:{args + ',' if args else ''}model={_ANY_MODEL}")
    run_specs = construct_run_specs(spec)
    if len(run_specs) != 1:
        raise ValueError(f"{description}: expands to {len(run_specs)} run specs; name one")
    return run_specs[0]


def sample(entry: dict[str, Any], output_path: str, seed: int) -> dict[str, Any]:
    run_spec = one_run_spec(entry["description"])
    scenario = create_scenario(run_spec.scenario_spec)
    scenario_args = sorted(run_spec.scenario_spec.args.items())
    key = ",".join(f"{k}={v}" for k, v in scenario_args)
    key = f"{scenario.name}:{key}" if key else scenario.name
    cache = get_scenario_cache_path(output_path, scenario.name)
    instances: list[Instance] = scenario.get_instances(cache)

    adapter_spec = run_spec.adapter_spec
    eval_splits = adapter_spec.eval_splits or EVAL_SPLITS
    evaluation = [instance for instance in instances if instance.split in eval_splits]
    order = list(range(len(evaluation)))
    random.Random(seed).shuffle(order)
    chosen = [evaluation[i] for i in order[: entry["eval"]]]

    train = [instance for instance in instances if instance.split == TRAIN_SPLIT]
    examples: list[Instance] = []
    if adapter_spec.max_train_instances > 0 and train:
        # The adapter's own choice; it reads only `adapter_spec` from the adapter.
        adapter = SimpleNamespace(adapter_spec=adapter_spec)
        for trial in range(adapter_spec.num_train_trials):
            picked = InContextLearningAdapter.sample_examples(
                adapter, list(train), seed=trial, sample_train=adapter_spec.sample_train
            )
            examples.extend(example for example in picked if example not in examples)
    return {
        "run_spec": _without_model(run_spec.name),
        "key": key,
        "available": len(evaluation),
        "train": len(examples),
        "instances": [asdict_without_nones(instance) for instance in examples + chosen],
    }


def _without_model(run_spec_name: str) -> str:
    name, _, args = run_spec_name.partition(":")
    kept = [arg for arg in args.split(",") if arg and not arg.startswith("model=")]
    return name + (":" + ",".join(kept) if kept else "")


def main() -> None:
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    register_builtin_configs_from_helm_package()
    import_user_plugins(request["plugins"])
    with tempfile.TemporaryDirectory(prefix="pack-output-") as output_path:
        # Run-spec functions (BIG-bench's) and scenarios read `benchmark_output/scenarios/`.
        os.symlink(os.path.abspath(request["data_dir"]), os.path.join(output_path, "scenarios"))
        set_benchmark_output_path(output_path)
        results = []
        for entry in request["entries"]:
            try:
                results.append(sample(entry, output_path, request["seed"]))
            except Exception as exc:  # reported with the run spec it belongs to
                results.append({"error": f"{type(exc).__name__}: {exc}"})
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump({"helm_version": importlib.metadata.version("crfm-helm"), "entries": results}, f)


if __name__ == "__main__":
    main()
