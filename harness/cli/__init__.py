"""The `harness` command line: one module per command, each thin over functions returning results.

Commands are registered explicitly below (no import side effects). What they share (the options
of an evaluation, RunOptions, the executor, errors on stderr and the exit codes) is _common.py's.
"""

from __future__ import annotations

import typer

from harness.cli import (
    check,
    competition,
    data,
    eval,
    instances,
    plan,
    report,
    reproduce,
    run,
    select,
    serve,
    status,
    submission,
    submit,
    sweep,
    tasks,
    teams,
    tiny_model,
)

app = typer.Typer(
    name="harness",
    help="Build, check, score and reproduce entries of LLM fine-tuning competitions.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _root() -> None:
    """Build, check, score and reproduce entries of LLM fine-tuning competitions."""


app.command("tiny-model", epilog=tiny_model.EPILOG)(tiny_model.main)
app.command("check", epilog=check.EPILOG)(check.main)
app.command("run", epilog=run.EPILOG)(run.main)
app.command("eval", epilog=eval.EPILOG)(eval.main)
app.command("sweep", epilog=sweep.EPILOG)(sweep.main)
app.command("report", epilog=report.EPILOG)(report.main)
app.command("reproduce", epilog=reproduce.EPILOG)(reproduce.main)
app.command("plan", epilog=plan.EPILOG)(plan.main)
app.add_typer(submission.app, name="submission")
app.add_typer(instances.app, name="instances")
app.add_typer(tasks.app, name="tasks")
app.add_typer(data.app, name="data")
app.add_typer(serve.app, name="serve")
app.add_typer(teams.app, name="teams")
app.add_typer(competition.app, name="competition")
app.command("submit", epilog=submit.EPILOG)(submit.main)
app.command("status", epilog=status.EPILOG)(status.main)
app.command("select", epilog=select.EPILOG)(select.main)
