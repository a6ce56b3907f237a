"""What a running entry's lease watches on this machine, and its hard ceiling.

The queue renews the lease of each entry it runs here every heartbeat, unless the entry's
evaluation is frozen (run/processes.py: a process working in the entry's HELM folder stopped by a
signal); an entry on a Ray node is renewed by its Ray task's own heartbeats (run/ray_executor.py),
which stop when its node dies or its evaluation freezes there. A lease not renewed for its length
lapses: the queue kills those processes, has the executor stop the entry wherever it runs (its
containers removed) and queues it again as an infrastructure failure. The ceiling bounds an entry
however it behaves: its build limit, the health checks' schedule, the stage's limit and HELM's
grace after it, plus CEILING_MARGIN_S.

    pids = entry_processes(job.helm_dir)
    frozen(pids) -> bool
    kill(pids)
    ceiling_s(options) -> seconds
"""

from __future__ import annotations

from harness.run.options import RunOptions
from harness.run.processes import entry_processes, frozen, kill

__all__ = ["CEILING_MARGIN_S", "ceiling_s", "entry_processes", "frozen", "kill"]

CEILING_MARGIN_S = 600.0


def ceiling_s(options: RunOptions) -> float:
    """The longest an entry may run under `options`, whatever it does."""
    health = options.health.tries * options.health.interval_s
    return (
        options.build_timeout_s
        + health
        + options.stage_limit_s
        + options.helm_grace_s
        + CEILING_MARGIN_S
    )
