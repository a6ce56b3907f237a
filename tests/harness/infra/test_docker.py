"""Real builds in the local Docker engine: hash-pinned installs; secrets kept out of images."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.infra.docker import build
from tests._wait import until
from tests.conftest import REPO, TEST_LABEL

pytestmark = pytest.mark.docker

LABELS = dict([TEST_LABEL.split("=")])


def _idna_requirement() -> str:
    """The idna pin, hashes included, exactly as lockfiles/dev.txt has it."""
    lock = (REPO / "lockfiles" / "dev.txt").read_text()
    match = re.search(r"^idna==\S+ \\\n(?:\s+--hash=sha256:\w+(?: \\)?\n)+", lock, re.MULTILINE)
    assert match, "lockfiles/dev.txt has no hash-pinned idna"
    return match.group(0)


def _context(tmp_path: Path, requirements: str, dockerfile: str) -> Path:
    (tmp_path / "requirements.txt").write_text(requirements)
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path


PINNED_INSTALL = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt
CMD ["/opt/venv/bin/python", "-c", "import idna; print(idna.encode('bücher.example').decode())"]
"""


def test_build_installs_a_hash_pinned_package_and_runs_it(
    tmp_path: Path, base_image: str, docker_client: Any
) -> None:
    context = _context(tmp_path, _idna_requirement(), PINNED_INSTALL)
    result = build(
        context,
        tag="harness-test/pinned:latest",
        log_path=tmp_path / "build.log",
        build_args={"BASE_IMAGE": base_image},
        labels=LABELS,
        timeout=600,
    )
    assert result.ok, result.log_path.read_text()[-3000:]
    output = docker_client.containers.run(result.image, remove=True, labels=LABELS)
    assert output.decode().strip() == "xn--bcher-kva.example"


def test_build_fails_on_a_hash_mismatch(tmp_path: Path, base_image: str) -> None:
    tampered = re.sub(r"sha256:\w+", "sha256:" + "0" * 64, _idna_requirement())
    context = _context(tmp_path, tampered, PINNED_INSTALL)
    result = build(
        context,
        tag="harness-test/tampered:latest",
        log_path=tmp_path / "build.log",
        build_args={"BASE_IMAGE": base_image},
        labels=LABELS,
        timeout=600,
    )
    assert not result.ok and not result.timed_out
    assert "DO NOT MATCH THE HASHES" in result.log_path.read_text()


def test_build_secret_reaches_the_build_but_not_the_image(
    tmp_path: Path, base_image: str, docker_client: Any
) -> None:
    token = "hf_" + "Q" * 34  # a made-up value shaped like a Hugging Face token
    secret = tmp_path / "token"
    secret.write_text(token)
    dockerfile = (
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        "RUN --mount=type=secret,id=hf_token "
        "python3 -c \"import hashlib; print(hashlib.sha256(open('/run/secrets/hf_token')"
        '.read().encode()).hexdigest())" > /token.sha256\n'
    )
    (tmp_path / "ctx").mkdir()
    context = _context(tmp_path / "ctx", "", dockerfile)
    result = build(
        context,
        tag="harness-test/secret:latest",
        log_path=tmp_path / "build.log",
        build_args={"BASE_IMAGE": base_image},
        secrets={"hf_token": secret},
        labels=LABELS,
        timeout=600,
    )
    assert result.ok, result.log_path.read_text()[-3000:]
    digest = docker_client.containers.run(
        result.image, ["cat", "/token.sha256"], remove=True, labels=LABELS
    )
    assert digest.decode().strip() == hashlib.sha256(token.encode()).hexdigest()
    image = docker_client.images.get(result.image)
    everything = str(image.attrs) + str(image.history()) + result.log_path.read_text()
    assert token not in everything


def test_a_harness_killed_mid_build_leaves_no_build_running(
    tmp_path: Path, base_image: str
) -> None:
    # The build's RUN step is a process of the engine's, found by its unique command line.
    marker = f"sleep {random.randrange(10**6, 10**7)}"
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nRUN {marker}\n")
    script = (
        "import sys; from pathlib import Path; from harness.infra.docker import build; "
        f"build(Path(sys.argv[1]), tag='harness-test/killed-build', log_path=Path(sys.argv[1]) "
        f"/ 'build.log', labels={LABELS!r}, timeout=300)"
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )

    def running() -> bool:
        return any(
            marker.encode() in proc.read_bytes().replace(b"\0", b" ")
            for proc in Path("/proc").glob("[0-9]*/cmdline")
            if proc.exists()
        )

    def exited() -> str | None:
        return None if harness.poll() is None else "the harness exited first"

    try:
        until(running, "the build ran", timeout_s=120, check=exited)
        harness.send_signal(signal.SIGKILL)  # the harness alone, not the docker CLI it started
        harness.wait()
        until(lambda: not running(), "the build stopped after the harness was killed")
    finally:
        harness.kill()
        harness.wait()
