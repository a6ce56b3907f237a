"""A base for executor fakes that end every entry inside submit(): the rest of the Executor
protocol (harness/run/executor.py), for entries that never run anywhere else."""

from __future__ import annotations

from harness.run.executor import Heartbeat, Node
from harness.run.options import RunOptions


class InstantExecutor:
    """Its subclass answers submit(); nothing is left running to interrupt, cancel or watch."""

    def start(self, options: RunOptions, run_id: str) -> None:
        pass

    def interrupt(self) -> None:
        raise AssertionError("nothing was interrupted")

    def cancel(self, name: str) -> None:
        raise AssertionError("nothing was cancelled")

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {}  # its entries end on this machine

    def nodes(self) -> list[Node]:
        return []

    def close(self) -> None:
        pass
