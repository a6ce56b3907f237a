"""What each run spec of a HELM conf asks of the model's context (run by harness/runspec_fit.py).

Runs inside `.venv-helm`, where the `harness` package is not installed, so it imports only HELM
and the standard library. It builds the run specs exactly as helm-run would in the same folder
(the same registries from PROD_ENV, the same plugins, the same `benchmark_output/`):

    cd RUN_DIR && python run_spec_limits.py CONF MODEL PROD_ENV RESULT.json [PLUGIN ...]

RESULT: {"entries": [...]}, one object per conf entry, in the conf's order:

    {"description": the entry's description, "run_specs": [{"name": HELM's run name, "label":
     the same without what the harness adds (model, groups, instance count),
     "max_tokens": the adapter's output tokens, "prompt": the text every prompt of the run spec
     holds at least (prefixes and instructions, no instance, no in-context example)}, ...]}

or {"description": ..., "error": why HELM could not build its run specs} (helm-run will report
that itself when it gets there).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from helm.benchmark.adaptation.adapter_spec import AdapterSpec
from helm.benchmark.config_registry import (
    register_builtin_configs_from_helm_package,
    register_configs_from_directory,
)
from helm.benchmark.presentation.run_entry import read_run_entries
from helm.benchmark.run import import_user_plugins, run_entries_to_run_specs
from helm.benchmark.runner import set_benchmark_output_path
from helm.common.object_spec import parse_object_spec

_SET_BY_THE_HARNESS = ("model", "groups", "max_eval_instances")


def shortest_prompt(spec: AdapterSpec) -> str:
    """What HELM's adapters put around any instance: a prompt is never shorter than this."""
    return "".join(
        (spec.global_prefix, spec.instructions, spec.input_prefix, spec.input_suffix,
         spec.output_prefix, spec.global_suffix)
    )  # fmt: skip


def label(run_name: str) -> str:
    """A run's name as people know the run spec: `gsm`, `mmlu:subject=anatomy,method=...`."""
    spec = parse_object_spec(run_name)
    args = [f"{k}={v}" for k, v in spec.args.items() if k not in _SET_BY_THE_HARNESS]
    return str(spec.class_name) + (":" + ",".join(args) if args else "")


def describe(entry: Any, model: str) -> dict[str, Any]:
    try:
        run_specs = run_entries_to_run_specs([entry], models_to_run=[model])
    except Exception as exc:  # reported with the entry it belongs to
        return {"description": entry.description, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "description": entry.description,
        "run_specs": [
            {
                "name": run_spec.name,
                "label": label(run_spec.name),
                "max_tokens": run_spec.adapter_spec.max_tokens,
                "prompt": shortest_prompt(run_spec.adapter_spec),
            }
            for run_spec in run_specs
        ],
    }


def main() -> None:
    conf, model, prod_env, result_path, *plugins = sys.argv[1:]
    register_builtin_configs_from_helm_package()
    register_configs_from_directory(prod_env)
    import_user_plugins(plugins)
    # Run-spec functions (BIG-bench's) read `benchmark_output/scenarios/`, as under helm-run.
    set_benchmark_output_path("benchmark_output")
    entries = read_run_entries([conf]).entries
    result = {"entries": [describe(entry, model) for entry in entries]}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
