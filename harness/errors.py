"""The harness's one error tree.

    HarnessError                 anything the harness reports instead of a traceback
    ├── ConfigError              bad usage or configuration (exit code 2)
    ├── EntryError               one entry is malformed or unusable; the batch goes on
    └── InfrastructureError      Docker, HELM or another outside tool is unavailable (exit code 3)

Docker and subprocess exceptions are translated into these where they are called, at one boundary
per tool; nothing else in the harness catches them.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = 1


class ConfigError(HarnessError):
    """Bad command-line usage or configuration."""

    exit_code = 2


class EntryError(HarnessError):
    """One entry is malformed or cannot be processed; other entries are unaffected."""

    exit_code = 1


class InfrastructureError(HarnessError):
    """An outside tool (Docker engine, HELM) is missing or not answering."""

    exit_code = 3
