"""Builders of entries on disk: folders, zips and git repositories made in tmp dirs by the tests."""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.checks import EntryReport, check_entry

Files = dict[str, str | bytes]

DIGEST = "sha256:" + "0123456789abcdef" * 4
# A submission as the team renders it: none of this may be flagged.
GOOD_DOCKERFILE = f"""\
# syntax=docker/dockerfile:1
ARG BASE_IMAGE=python:3.11-slim-bookworm@{DIGEST}
ARG WEIGHTS=local

FROM ${{BASE_IMAGE}} AS base
ENV PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-deps --require-hashes -r /tmp/requirements.txt

FROM base AS weights-hub
ARG MODEL_REVISION=0123456789abcdef0123456789abcdef01234567
COPY fetch_weights.py /tmp/fetch_weights.py
RUN --mount=type=secret,id=hf_token \\
    python /tmp/fetch_weights.py "$MODEL_REVISION" /opt/model

FROM base AS weights-local
COPY model/ /opt/model/

FROM weights-${{WEIGHTS}} AS weights

FROM base AS serve
WORKDIR /app
COPY --from=weights /opt/model /opt/model
COPY server/*.py /app/
ENV MODEL_PATH=/opt/model HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]
"""
GOOD_LOCK = (
    "torch==2.13.0 \\\n    --hash=sha256:"
    + "ab" * 32
    + " \\\n    --hash=sha256:"
    + "cd" * 32
    + "\n"
    "peft @ git+https://github.com/huggingface/peft@" + "1f" * 20 + "\n"
)
GOOD_FILES: Files = {
    "Dockerfile": GOOD_DOCKERFILE,
    "requirements.txt": GOOD_LOCK,
    "fetch_weights.py": 'SECRET = Path("/run/secrets/hf_token")\ntoken = SECRET.read_text()\n'
    "snapshot_download(repo, revision=rev, token=token or None)\n",
    "model/config.json": "{}\n",
    "server/main.py": "import os\nMODEL = os.environ['MODEL_PATH']\n",
    "server/api.py": "TOKEN_LIMIT = 2048\nmax_tokens: int = 16\n",
    ".dockerignore": ".git\n.env\n**/__pycache__\n",
    "README.md": "Log in with `huggingface-cli login --token <token>` for gated models.\n",
}


def write_files(root: Path, files: Files) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def commit_then_delete(repo: Path, rel: str, content: str) -> None:
    """Make `repo` a git repository whose history has `rel` with `content`, deleted since."""
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "base")
    write_files(repo, {rel: content})
    git(repo, "add", rel)
    git(repo, "commit", "-q", "-m", "add")
    git(repo, "rm", "-q", rel)
    git(repo, "commit", "-q", "-m", "remove")


def write_zip(path: Path, files: Files) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, content in files.items():
            zf.writestr(rel, content)
    return path


@pytest.fixture
def entry(tmp_path: Path) -> Callable[..., EntryReport]:
    """Write an entry folder from `files` (and optional git history) and check it."""

    def make(
        files: Files, name: str = "entry", history: tuple[str, str] | None = None
    ) -> EntryReport:
        root = write_files(tmp_path / "entries" / name, files)
        if history:
            commit_then_delete(root, *history)
        return check_entry(root)

    return make


def rules(report: EntryReport) -> set[tuple[str, str, str]]:
    return {(f.rule, f.severity, f.path) for f in report.findings}
