"""Toolkit and reproducibility harness for "1 LLM + 1 GPU + 1 day" fine-tuning competitions.

The public API is what `__all__` lists; every other module is an internal detail.

    render_submission(...)          a hash-pinned submission folder       (harness submission new)
    check_entries(ENTRIES_DIR)      static checks of every entry          (harness check)
    run_entries(ENTRIES_DIR, opts)  build, serve and score every entry    (harness run)
    build_leaderboard(Store(out))   the leaderboard of a results folder   (harness report)
    reproduce_entry(ENTRY, opts)    re-run an entry's training and score  (harness reproduce)
"""

from harness.checks import EntryReport, Finding, check_entries, check_entry
from harness.errors import ConfigError, DiskFullError, HarnessError, InfrastructureError
from harness.leaderboard import write_leaderboard
from harness.leaderboard.build import build_leaderboard
from harness.reproduce.flow import reproduce_entry
from harness.reproduce.options import ReproduceOptions, Reproduction
from harness.run.driver import EntryOutcome, RunOptions, run_entries
from harness.secrets import find_secrets, redact
from harness.store import Status, Store
from harness.submission.render import render_submission, smoke_config, use_weights
from harness.submission.tiny_model import write_tiny_dataset, write_tiny_model

__all__ = [
    "ConfigError",
    "DiskFullError",
    "EntryOutcome",
    "EntryReport",
    "Finding",
    "HarnessError",
    "InfrastructureError",
    "ReproduceOptions",
    "Reproduction",
    "RunOptions",
    "Status",
    "Store",
    "build_leaderboard",
    "check_entries",
    "check_entry",
    "find_secrets",
    "redact",
    "render_submission",
    "reproduce_entry",
    "run_entries",
    "smoke_config",
    "use_weights",
    "write_leaderboard",
    "write_tiny_dataset",
    "write_tiny_model",
]
