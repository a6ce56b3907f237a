"""`harness reproduce --top K RESULTS_DIR`: reproduce the K best entries of a results store, each
as one job through the executor seam (harness/run/executor.py: threads on this machine, Ray tasks
on a fleet; one GPU each), then write one combined report and the leaderboard with each entry's
verdict. The competition's finals use this very function.

    report = reproduce_top(2, ReproduceOptions(track="4090", results=Path("results/")))
    report.entries      TopEntry per entry, by rank: rank, entry, kept, folder, verdict
    report.paths        RESULTS_DIR/reproduce/report.{md,html,json}
    report.exit_code    0 when every one reproduced (or within noise), else 1

The ranks are the leaderboard's (`build_leaderboard`: the final standing), among the entries
scored in `options.stage`; each entry is found where the store says it was run from. Every
reproduction is `flow.reproduce_locked` with that entry and the same options (their `gpus` the
one GPU its job holds); RESULTS_DIR's lock is held throughout.

Resumable: an entry's reproduction.json is written whole and last (report.py), so a rerun after a
kill keeps every entry that has one for the same stage and request (`once`, `replay`, `runs=N`)
and redoes the others (what a killed one left in Docker is removed first); `force` redoes all.
On an executor whose tasks do not see this machine's files (Ray without --shared-storage), each
task carries the entry and what it needs of the original run, and its entry's folder comes back
with its result (shipped.py); with shared storage each task reads and writes RESULTS_DIR itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.infra import docker as engine
from harness.infra.lock import command_line, hold_results_lock
from harness.leaderboard import build_leaderboard, write_leaderboard
from harness.reproduce.flow import remove_leftovers, reproduce_locked
from harness.reproduce.options import ReproduceOptions, Reproduction, Verdict
from harness.reproduce.report import REPORT, TopEntry, write_combined
from harness.reproduce.shipped import Reproduce, ShippedReproduction, receive
from harness.run.executor import LocalExecutor, Task, TaskExecutor
from harness.run.options import RunOptions
from harness.store import Store, entry_slug, results_id

# What counts as reproduced in the exit code, as for one entry (Reproduction.exit_code).
PASSING = (Verdict.REPRODUCED.value, Verdict.WITHIN_NOISE.value)


@dataclass(frozen=True)
class TopReport:
    entries: tuple[TopEntry, ...]  # by rank
    paths: tuple[Path, ...]  # the combined report's files
    note: str  # fewer entries scored than asked for, say

    @property
    def exit_code(self) -> int:
        return 0 if all(e.verdict in PASSING for e in self.entries) else 1


def _job(name: str, entry: Path, options: ReproduceOptions, gpu: int | None) -> Reproduction:
    """One entry's reproduction, on the GPU its job holds (None: the machine has none)."""
    return reproduce_locked(entry, replace(options, gpus=() if gpu is None else (gpu,)), name=name)


def _ranked(options: ReproduceOptions, top: int) -> list[tuple[int, str, Path]]:
    """The `top` best entries scored in the stage: rank, name and where the entry is."""
    with Store(options.results, create=False) as store:
        board = build_leaderboard(store, intervals=False)
        paths = store.entries()
    scored = [
        row
        for row in board.rows
        if row.rank is not None
        and options.stage in row.stages
        and row.stages[options.stage].score is not None
    ]
    if not scored:
        raise ConfigError(f"no entry of {options.results} was scored in the {options.stage} stage")
    chosen = [(row.rank, row.entry, Path(paths[row.entry])) for row in scored[:top] if row.rank]
    missing = [f"{name} ({path})" for _, name, path in chosen if not path.exists()]
    if missing:
        raise ConfigError(
            f"the store's path of {', '.join(missing)} does not exist here: run from the folder "
            "`harness run` ran in, or put the entries back where they were"
        )
    return chosen


def finished(folder: Path, name: str, options: ReproduceOptions) -> dict[str, Any] | None:
    """The entry's finished reproduction (its reproduction.json) when it is one of this
    request, else None."""
    try:
        data = json.loads((folder / f"{REPORT}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    asked = (name, options.stage, options.request)
    return data if (data.get("entry"), data.get("stage"), data.get("request")) == asked else None


def entry_task(
    name: str,
    path: Path,
    options: ReproduceOptions,
    *,
    shared_storage: bool,
    reproduce: Reproduce = _job,
) -> Task[Any]:
    """One entry's reproduction as an executor's task(gpu): run where RESULTS_DIR is, or
    carrying its inputs (`shared_storage` False); its result goes to `entry_result`."""
    if shared_storage:
        return functools.partial(reproduce, name, path, options)
    return ShippedReproduction.pack(name, path, options, reproduce)


def entry_result(
    name: str, options: ReproduceOptions, result: Any, *, shared_storage: bool
) -> Reproduction:
    """The reproduction an `entry_task` returned, its folder received into RESULTS_DIR when it
    ran elsewhere."""
    return result if shared_storage else receive(name, options, *result)


def reproduce_top(
    top: int,
    options: ReproduceOptions,
    *,
    executor: TaskExecutor | None = None,
    force: bool = False,
    on_progress: Callable[[str, str], None] = lambda entry, message: None,
    candidates: Sequence[tuple[int, str, Path]] | None = None,
    reproduce: Reproduce = _job,
) -> TopReport:
    """Reproduce the `top` best entries of `options.results` (see the module docstring).

    `executor`: where the jobs run (default: one at a time on this machine); started and closed
    here. `on_progress(entry, message)`: each entry queued, kept or judged. `candidates`: the
    entries to choose from, (rank, name in the store, where the entry is), best first, when the
    caller ranks them (a competition's final ranking among its finalists); default: the store's
    leaderboard. `reproduce(name, entry, options, gpu)`: one entry's job (tests stand in for it).
    Raises ConfigError (bad input, nothing started) and InfrastructureError (the jobs' machines
    failed); an entry's own failure is its verdict."""
    if top < 1:
        raise ConfigError(f"--top must be 1 or more, got {top}")
    if not options.results.is_dir():
        raise ConfigError(f"no results folder {options.results}")
    folder = options.results / "reproduce"
    with hold_results_lock(options.results, command_line()):
        chosen = list(candidates[:top]) if candidates is not None else _ranked(options, top)
        if not chosen:
            raise ConfigError("no ranked entry to reproduce")
        entries = {
            name: TopEntry(
                rank,
                name,
                not force and finished(folder / entry_slug(name), name, options) is not None,
                folder / entry_slug(name),
            )
            for rank, name, _ in chosen
        }
        for entry in entries.values():
            if entry.kept:
                on_progress(entry.entry, f"kept: {entry.verdict} (finished earlier)")
        pending = [(name, path) for _, name, path in chosen if not entries[name].kept]
        if pending:
            _run(pending, options, executor or LocalExecutor(1), on_progress, reproduce)
        ranked = tuple(entries[name] for _, name, _ in chosen)
        paths = write_combined(folder, ranked, options.stage)
        with Store(options.results, create=False) as store:
            write_leaderboard(build_leaderboard(store, track=options.track), options.results)
    note = "" if len(chosen) == top else f"only {len(chosen)} entries were scored, not {top}"
    return TopReport(ranked, tuple(paths), note)


def _run(
    pending: list[tuple[str, Path]],
    options: ReproduceOptions,
    executor: TaskExecutor,
    on_progress: Callable[[str, str], None],
    reproduce: Reproduce,
) -> None:
    run = RunOptions(
        track=options.track, stage=options.stage, out=options.results, gpus=options.gpus
    )
    executor.start(run, results_id(options.results))
    try:
        futures: dict[Future[Any], str] = {}
        for name, path in pending:
            job = entry_task(
                name, path, options, shared_storage=executor.shared_storage, reproduce=reproduce
            )
            on_progress(name, "queued")
            futures[executor.submit_task(job)] = name
        for future in as_completed(futures):
            # An exception ends the batch: the finished ones are kept.
            name = futures[future]
            result = entry_result(
                name, options, future.result(), shared_storage=executor.shared_storage
            )
            on_progress(name, f"{result.verdict.value}: {result.reason}")
    except BaseException:
        # An interrupt, or a job's machine failed: what still runs is stopped and removed; its
        # entries have no reproduction.json, so a rerun redoes them.
        executor.interrupt()
        with suppress(Exception):  # no engine here (a Ray driver's machine): the rerun removes them
            sdk = engine.client()
            for name, _ in pending:
                remove_leftovers(sdk, options.results / "reproduce" / entry_slug(name))
        raise
    executor.close()
