"""`harness eval`: score a model folder with HELM on an instance pack, no image built."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.cli._common import INTERRUPTED, Budget, abort
from harness.errors import HarnessError
from harness.evaluate.local import EvalOptions, EvalResult, evaluate_model
from harness.leaderboard.compare import score_text

EPILOG = """**Examples**

    harness eval out/merged --instances packs/open-600

    harness eval out/merged --instances packs/open-600 --budget 100 --submission . --json

    harness tiny-model /tmp/tiny && harness eval /tmp/tiny --instances packs/demo
"""


def report(result: EvalResult) -> list[str]:
    """The result as lines: each scenario's metric and interval, failures, the time taken."""
    lines = [
        f"{name}: {score.metric or 'no metric'} {score_text(score) or 'no value'} "
        f"({score.instances} instances, {score.run_specs} run spec(s))"
        for name, score in result.scores.items()
    ]
    lines.append("95% intervals: a bootstrap over the evaluated instances.")
    lines += [f"failed: {f.run_spec} ({f.scenario}): {f.reason}" for f in result.failed]
    if result.error:
        lines.append(f"HELM stopped early: {result.error}")
    lines.append(
        f"{result.stats.answered} request(s) answered; {result.seconds:.1f} s in all "
        f"(server up after {result.start_s:.1f} s)"
    )
    return lines


def main(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face model folder (out/merged).")],
    instances: Annotated[Path, typer.Option(help="An instance pack (`harness instances build`).")],
    budget: Budget = None,
    submission: Annotated[
        Path | None,
        typer.Option(help="A submission folder whose server code runs [default: the template's]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Logs and HELM's run folder [default: harness-eval/MODEL_DIR's name]."),
    ] = None,
    max_sequence_length: Annotated[
        int | None,
        typer.Option(help="Context HELM fits prompts into [default: the model's]."),
    ] = None,
    start_timeout: Annotated[
        float, typer.Option(help="Seconds the server may take to load the model.")
    ] = 600.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Serve MODEL_DIR with the submission's server in a local process and score it with HELM
    on the pack; print each scenario's raw metric with its 95% interval, the run specs that
    failed and the time taken. Exit code 1 when a run spec failed or the server died."""
    options = EvalOptions(
        model_dir=model_dir,
        instances=instances,
        out=out or Path("harness-eval") / model_dir.resolve().name,
        budget=budget,
        submission=submission,
        max_sequence_length=max_sequence_length,
        start_timeout_s=start_timeout,
    )
    console = Console(highlight=False, soft_wrap=True)
    try:
        result = evaluate_model(options)
    except HarnessError as exc:
        abort(exc)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: the server was stopped")
        raise typer.Exit(INTERRUPTED) from None
    if json_output:
        print(result.to_json(), end="")
    else:
        for line in report(result):
            console.print(line, markup=False)
    raise typer.Exit(0 if result.ok else 1)
