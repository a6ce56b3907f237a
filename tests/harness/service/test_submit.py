"""`harness submit` sends what `docker build` reads, and refuses an oversize entry before sending.

The service is a real `harness serve` (no evaluation: `--jobs 0`); entries are rendered
submissions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app
from harness.service.client import build_context, zip_entry
from harness.submission.render import render_submission
from tests.harness.service.conftest import HARNESS, Serve


def _trained_folder(tmp_path: Path, *, weights_mode: str, model_bytes: int = 1000) -> Path:
    """A rendered submission after training: out/ holds checkpoints, model/ the merged weights."""
    folder = render_submission("4090", "entry-1", tmp_path / "entry-1").path
    dockerfile = folder / "Dockerfile"
    text = re.sub(
        r"^ARG WEIGHTS=\S+", f"ARG WEIGHTS={weights_mode}", dockerfile.read_text(), flags=re.M
    )
    dockerfile.write_text(text)
    (folder / "out" / "train" / "checkpoint-2").mkdir(parents=True)
    (folder / "out" / "train" / "checkpoint-2" / "adapter.safetensors").write_bytes(b"a" * 100)
    weights = os.urandom(model_bytes)
    (folder / "model" / "model.safetensors").write_bytes(weights)
    if weights_mode == "url":  # as `harness submission weights --url-base` locks it
        entry = {"path": "model.safetensors", "url": "https://example.org/m/model.safetensors",
                 "size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}  # fmt: skip
        (folder / "weights.lock.json").write_text(json.dumps({"files": [entry]}))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".env").write_text("HF_TOKEN=x\n")
    (folder / "notes.token").write_text("x\n")
    return folder


def test_the_build_context_leaves_out_training_outputs_ignored_files_and_unserved_weights(
    tmp_path: Path,
) -> None:
    by_url = build_context(_trained_folder(tmp_path / "url", weights_mode="url"))
    assert "Dockerfile" in by_url and "config.yaml" in by_url and "data/README.md" in by_url
    assert not [p for p in by_url if p.startswith(("out/", "model/", ".git/", ".env"))]
    assert "notes.token" not in by_url
    local = _trained_folder(tmp_path / "local", weights_mode="local")
    served = build_context(local)
    assert "model/model.safetensors" in served
    assert set(served) - set(by_url) == {"model/README.md", "model/model.safetensors"}
    with zipfile.ZipFile(zip_entry(local, tmp_path / "entry.zip")) as archive:
        assert sorted(archive.namelist()) == served


def test_submit_prints_the_size_and_refuses_over_the_servers_limit_before_sending(
    serve: Serve, tmp_path: Path
) -> None:
    served = serve("--jobs", "0", "--max-upload-mb", "1")
    token = served.add_team("team-a")
    env = {**os.environ, "HARNESS_TOKEN": token}
    command = [str(HARNESS), "submit", "--server", served.url, "--track", "4090"]
    # 3 MB of incompressible weights in model/, served with WEIGHTS=local: over the 1 MiB limit.
    big = _trained_folder(tmp_path / "big", weights_mode="local", model_bytes=3 * 10**6)
    refused = subprocess.run([*command, str(big)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "over the server's limit of 1 MiB" in refused.stderr
    assert "WEIGHTS=url or hub" in refused.stderr
    with served.client(token) as client:
        assert client.get("/api/v1/submissions").json() == []  # nothing reached the server
    # The same folder fetching its weights at build time is a few KB and is queued.
    small = _trained_folder(tmp_path / "small", weights_mode="url", model_bytes=3 * 10**6)
    accepted = subprocess.run([*command, str(small)], capture_output=True, text=True, env=env)
    assert accepted.returncode == 0, accepted.stderr
    size = re.search(r"uploading ([\d.]+) MiB \(the server takes up to 1 MiB\)", accepted.stderr)
    assert size is not None and float(size[1]) < 0.5, accepted.stderr
    with served.client(token) as client:
        (queued,) = client.get("/api/v1/submissions").json()
    assert queued["id"] == accepted.stdout.split()[-1] and queued["status"] == "queued"


def test_check_on_a_submission_folder_checks_it_as_one_entry(tmp_path: Path) -> None:
    folder = render_submission("4090", "entry-1", tmp_path / "entry-1").path
    result = CliRunner().invoke(app, ["check", str(folder), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"entry-1"' in result.output and '"data"' not in result.output
    inside = subprocess.run(
        [str(HARNESS), "check", ".", "--format", "json"], cwd=folder, capture_output=True, text=True
    )
    assert inside.returncode == 0 and '"entry-1"' in inside.stdout, inside.stdout + inside.stderr
