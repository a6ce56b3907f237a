"""Shared fixtures: a tiny model, the Docker engine, the HELM environment, a real browser and a
small real filesystem to fill up (`small_disk`, `fill_disk`).

Tests marked `docker` run whenever an engine is reachable and are skipped with the reason
otherwise; under CI (CI=true) an unreachable engine fails them instead. The same goes for
`browser` (headless Debian Chromium through Selenium; scripts/chromium.sh installs it). Every image
and container a test makes carries the label in `TEST_LABEL` (or, when `harness run` made it, the
run label of a results folder under the session's temporary folder) and is removed at the end of
the session; a container, network or volume still there by then fails the session: tests must not
leak them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.run.health import HealthSchedule, wait_healthy
from harness.store import RUN_LABEL, STORE_FILENAME, results_id
from harness.submission.tiny_model import write_tiny_model

REPO = Path(__file__).resolve().parent.parent
HELM_BIN = REPO / ".venv-helm" / "bin"
BASE_IMAGE = os.environ.get("HARNESS_BASE_IMAGE", "harness-base:bookworm")
# One value per test session: concurrent sessions on one engine never remove each other's things.
TEST_LABEL = f"org.harness.managed=test-{os.getpid()}"
TEST_LABELS = dict([TEST_LABEL.split("=")])
IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's packages: scripts/chromium.sh installs both
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_WINDOW = (1400, 1000)  # CSS pixels: fixed, so layout and screenshots do not vary


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI where everything a test needs must be set up."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of 64 MiB for this test only (a tmpfs: its pages live in memory), to
    fill up with `fill_disk`; mounting needs root. Unmounted at the end, lazily if still busy."""
    if os.geteuid() != 0:
        _unavailable("mounting a small filesystem for a full disk needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "harness-test", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the file to delete to free it."""
    filler = folder / "filler"
    chunk = b"\0" * 64 * 1024
    with filler.open("wb", buffering=0) as out:  # unbuffered: nothing left to flush at close
        try:
            while out.write(chunk):
                pass
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model + tokenizer, written once per session (read-only for tests)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _session_run_ids(basetemp: Path) -> set[str]:
    """The RUN_LABEL values of the results folders this session's tests wrote (in or out of
    process): what the harness built or started for them carries one of these."""
    return {results_id(store.parent) for store in basetemp.rglob(STORE_FILENAME)}


def _leftovers(client: Any, filters: list[dict[str, str]]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"containers": [], "networks": [], "volumes": [], "images": []}
    for label in filters:
        found["containers"] += client.containers.list(all=True, filters=label)
        found["networks"] += client.networks.list(filters=label)
        found["volumes"] += client.volumes.list(filters=label)
        found["images"] += client.images.list(filters=label)
    return found


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # docker raises several unrelated types when no engine answers
        _unavailable(f"no Docker engine is reachable ({type(exc).__name__}); run `make engine`")
    yield client
    # Only this session's things: other sessions may share the engine.
    ids = _session_run_ids(tmp_path_factory.getbasetemp())
    filters = [{"label": TEST_LABEL}, *({"label": f"{RUN_LABEL}={i}"} for i in sorted(ids))]
    left = _leftovers(client, filters)
    # Images are kept for reuse until the session ends; anything else still here is a leak.
    leaked = {kind: [t.name for t in things] for kind, things in left.items() if kind != "images"}
    for container in left["containers"]:
        container.remove(force=True)
    for volume in left["volumes"]:
        volume.remove(force=True)
    for network in left["networks"]:
        network.remove()
    for image in left["images"]:
        with contextlib.suppress(Exception):  # already gone with a sibling tag
            client.images.remove(image.id, force=True, noprune=False)
    client.images.prune(filters={"dangling": True})
    after = _leftovers(client, filters)
    remaining = {kind: [t.id for t in things] for kind, things in after.items()}
    client.close()
    assert not any(leaked.values()), f"tests left these behind (now removed): {leaked}"
    assert not any(remaining.values()), f"the session's Docker objects remain: {remaining}"


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The local base image, created by scripts/base-image.sh when it is missing."""
    result = subprocess.run(
        [str(REPO / "scripts" / "base-image.sh"), BASE_IMAGE], capture_output=True, text=True
    )
    if result.returncode != 0:
        _unavailable(f"the base image {BASE_IMAGE} could not be made: {result.stderr[-500:]}")
    return BASE_IMAGE


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The bin folder of the crfm-helm environment (`make setup` creates it)."""
    if not (HELM_BIN / "helm-run").exists():
        _unavailable(f"crfm-helm is not installed in {HELM_BIN.parent}; run `make setup`")
    return HELM_BIN


@pytest.fixture(scope="session")
def tiny_server_url(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The submission server (templates/server) on the tiny model, under a real uvicorn on a free
    local port, started the way a submission's container starts it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "MODEL_PATH": str(tiny_model_dir)}
    command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO / "templates" / "server",
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(
            url,
            schedule=HealthSchedule(tries=1, interval_s=120, poll_s=0.2),
            alive=lambda: process.poll() is None,
        )
        assert health.healthy, f"{health.reason}\n{log.read_text()[-3000:]}"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium driven by Selenium (`selenium.webdriver.Chrome`), one per session.

    Open pages with `browser.get("file://...")` or an http URL on 127.0.0.1; it has a fresh
    profile, no network services of its own (no sync, updates or background fetches) and a
    fixed window of BROWSER_WINDOW. Save what it shows with the `screenshot` fixture."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _unavailable(f"no {CHROMIUM} and {CHROMEDRIVER}: run scripts/chromium.sh (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, and in containers, Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size={},{}".format(*BROWSER_WINDOW),
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot(browser: Any, tmp_path: Path) -> Callable[[str], Path]:
    """`screenshot("name")` saves what the browser shows as TMP_PATH/screenshots/name.png."""

    def save(name: str) -> Path:
        path = tmp_path / "screenshots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        if not browser.save_screenshot(str(path)):
            raise AssertionError(f"the browser could not save a screenshot to {path}")
        return path

    return save


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Docker tests ask for the engine through its fixture: no engine skips them (fails under CI).
    for item in items:
        if not isinstance(item, pytest.Function):  # only test functions ask for fixtures
            continue
        if item.get_closest_marker("docker") and "docker_client" not in item.fixturenames:
            item.fixturenames.insert(0, "docker_client")
