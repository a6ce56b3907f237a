"""WEIGHTS=url in a real `docker build`: the rendered Dockerfile downloads the locked files from a
server on 127.0.0.1 (the build uses the host network) and verifies them; a tampered file fails it.

Only the weights stage is built, on the local base image with the base stage's package lock
emptied: that stage needs Python alone, and the full image (torch) is built by the slow tests in
test_submission_docker.py and tests/harness/service/test_service_docker.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.infra.docker import buildkit_cli
from harness.submission.render import lock_weights, render_submission
from tests.conftest import TEST_LABEL

pytestmark = pytest.mark.docker


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """`folder` over plain HTTP on 127.0.0.1 (the stand-in for an HTTPS bucket or the hub)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/merged"
    finally:
        server.shutdown()
        server.server_close()


def _build(folder: Path, tag: str) -> subprocess.CompletedProcess[str]:
    command = [*buildkit_cli(), "--network", "host", "--no-cache", "--progress", "plain"]
    command += ["--target", "weights-url", "--label", TEST_LABEL, "-t", tag, str(folder)]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_the_build_downloads_and_verifies_locked_weights_and_fails_on_a_tampered_file(
    tmp_path: Path, tiny_model_dir: Path, base_image: str, docker_client: Any
) -> None:
    uploaded = tmp_path / "bucket" / "merged"
    shutil.copytree(tiny_model_dir, uploaded)
    entry = render_submission("4090", "by-url", tmp_path / "by-url", base_image=base_image).path
    (entry / "requirements.txt").write_text("")  # see the module docstring
    tag = f"harness-test-weights-url:{os.getpid()}"
    with serving(uploaded.parent) as url:
        lock_weights(entry, tiny_model_dir, url)
        built = _build(entry, tag)
        assert built.returncode == 0, built.stderr[-3000:]
        size = (tiny_model_dir / "model.safetensors").stat().st_size
        assert f"model.safetensors: {size} bytes, sha256 verified" in built.stderr
        inside = docker_client.containers.run(
            tag,
            ["sha256sum", "/opt/model/model.safetensors"],
            remove=True,
            labels=dict([TEST_LABEL.split("=")]),
        ).decode()
        expected = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes())
        assert inside.split()[0] == expected.hexdigest()

        weights = uploaded / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # one bit, same size: only the hash can tell
        weights.write_bytes(bytes(data))
        tampered = _build(entry, tag + "-tampered")
    assert tampered.returncode != 0
    assert "weights file model.safetensors from" in tampered.stderr
    assert "does not match the lock" in tampered.stderr
