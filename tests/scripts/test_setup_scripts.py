"""The engine, base-image and Chromium scripts are idempotent: with all in place they change
nothing."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import BASE_IMAGE, REPO, TEST_LABELS


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.docker
def test_engine_script_leaves_a_running_engine_alone(docker_client: Any) -> None:
    result = _run("docker-engine.sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # neither installed nor started anything


@pytest.mark.docker
def test_base_image_script_keeps_an_existing_image(base_image: str, docker_client: Any) -> None:
    before = docker_client.images.get(BASE_IMAGE).id
    result = _run("base-image.sh", BASE_IMAGE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert docker_client.images.get(BASE_IMAGE).id == before


@pytest.mark.docker
def test_base_image_has_python_311_venv_and_the_hosts_ca_bundle(
    base_image: str, docker_client: Any
) -> None:
    script = (
        "import ssl, sys, venv; print(sys.version_info[:2]); "
        "print(open('/etc/ssl/certs/ca-certificates.crt').read() == open('/host-ca').read())"
    )
    output = docker_client.containers.run(
        base_image,
        ["python3", "-c", script],
        remove=True,
        labels=TEST_LABELS,
        volumes={"/etc/ssl/certs/ca-certificates.crt": {"bind": "/host-ca", "mode": "ro"}},
    )
    assert output.decode().split() == ["(3,", "11)", "True"]


@pytest.mark.browser
def test_the_chromium_script_changes_nothing_when_chromium_is_installed(browser: Any) -> None:
    result = _run("chromium.sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # installed nothing
