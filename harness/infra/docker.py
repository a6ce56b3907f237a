"""The one boundary to the Docker engine: builds via a BuildKit-capable CLI, the rest via the SDK.

Builds go through the `docker` command line because the SDK only speaks the legacy builder, and
submissions need BuildKit (`RUN --mount=type=secret` keeps tokens out of every layer). Docker and
subprocess exceptions become `InfrastructureError` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, InfrastructureError
from harness.infra.gpus import detect_gpus, gpu_environment
from harness.infra.lock import die_with_parent

LABEL = "org.harness.managed"


@dataclass(frozen=True)
class BuildResult:
    """How one `docker build` ended; the full log is in `log_path`."""

    ok: bool
    timed_out: bool
    seconds: float
    log_path: Path
    image: str


def _client_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run(
        [binary, "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return tuple(int(part) for part in out.split("+")[0].split(".")[:2] if part.isdigit())


@functools.cache
def buildkit_cli() -> tuple[str, ...]:
    """A docker command line that builds with BuildKit.

    Either one with the buildx plugin, or a client older than 23.0, whose BuildKit is built in
    (Debian's docker.io); a newer client without buildx would fall back to the legacy builder.
    """
    candidates = [os.environ.get("HARNESS_DOCKER"), shutil.which("docker"), "/usr/bin/docker"]
    for binary in dict.fromkeys(c for c in candidates if c and Path(c).exists()):
        try:
            if subprocess.run([binary, "buildx", "version"], capture_output=True).returncode == 0:
                return (binary, "buildx", "build", "--load")
            version = _client_version(binary)
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
        if version and version < (23,):
            return (binary, "build")
    raise InfrastructureError(
        "no docker command line with BuildKit found: install the buildx plugin or Debian's "
        "docker.io (scripts/docker-engine.sh), or point HARNESS_DOCKER at one"
    )


def client() -> Any:
    """A connected Docker SDK client, or InfrastructureError saying why there is none."""
    import docker

    try:
        sdk = docker.from_env(timeout=600)
        sdk.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        raise InfrastructureError(f"no Docker engine is reachable: {exc}") from exc
    return sdk


def build(
    context: Path,
    *,
    tag: str,
    log_path: Path,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    secrets: Mapping[str, Path] | None = None,
    labels: Mapping[str, str] | None = None,
    network: str | None = None,
    timeout: float = 7200,
) -> BuildResult:
    """`docker build` CONTEXT with BuildKit; the log (plain progress) goes to `log_path`.

    `secrets` maps a build-secret id to a file whose content the Dockerfile reads with
    `RUN --mount=type=secret,id=ID`: it never lands in a layer or in the image config.
    `network` is the build's RUN network (`host`: servers on this machine, a local mirror).
    """
    cmd = [*buildkit_cli(), "--progress=plain", "--tag", tag]
    if dockerfile is not None:
        cmd += ["--file", str(dockerfile)]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for secret_id, path in (secrets or {}).items():
        cmd += ["--secret", f"id={secret_id},src={path}"]
    for key, value in {LABEL: "true", **(labels or {})}.items():
        cmd += ["--label", f"{key}={value}"]
    if network:
        cmd += ["--network", network]
    cmd.append(str(context))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        try:
            # The CLI dies with the harness (its build on the daemon is then cancelled).
            proc = subprocess.run(
                cmd,
                preexec_fn=die_with_parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "DOCKER_BUILDKIT": "1"},
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return BuildResult(False, True, time.monotonic() - started, log_path, tag)
        except OSError as exc:
            raise InfrastructureError(f"could not run docker build: {exc}") from exc
    return BuildResult(proc.returncode == 0, False, time.monotonic() - started, log_path, tag)


# The state of a container that is gone: removed from outside the harness, or lost with its engine.
REMOVED = "removed"


def engine_unreachable(exc: BaseException) -> bool:
    """Whether `exc` means the engine stopped answering (stopped, restarting), not a refusal."""
    import requests

    return isinstance(exc, requests.exceptions.ConnectionError)


@contextlib.contextmanager
def engine_calls(what: str) -> Iterator[None]:
    """Translate an engine that stopped answering (the SDK raises requests' ConnectionError, an
    OSError) into InfrastructureError."""
    try:
        yield
    except Exception as exc:
        if engine_unreachable(exc):
            raise InfrastructureError(f"the Docker engine stopped answering ({what})") from exc
        raise


@dataclass
class RunningContainer:
    """A detached container serving HTTP on its port 80, and the URL the harness reaches it at.

    A container removed behind the harness's back (or while being removed) is not an error here:
    it is not alive, its state's Status is `REMOVED`, its logs are empty. An engine that stops
    answering raises InfrastructureError, except from `remove` (nothing is left to remove then).
    """

    container: Any
    url: str

    def alive(self) -> bool:
        return self.state().get("Status") in ("created", "running")

    def state(self) -> dict[str, Any]:
        import docker.errors

        with engine_calls("reading a container's state"):
            try:
                self.container.reload()
            except docker.errors.NotFound:
                return {"Status": REMOVED}
        state = dict(self.container.attrs.get("State", {}))
        return {"Status": REMOVED} if state.get("Status") == "removing" else state

    def logs(self, tail: int = 2000) -> str:
        import docker.errors

        with engine_calls("reading a container's logs"):
            try:
                return bytes(self.container.logs(tail=tail)).decode(errors="replace")
            except docker.errors.APIError as exc:
                if _going(exc):
                    return ""
                raise

    def remove(self, wait_s: float = 30.0) -> None:
        """Remove it; when someone else is removing it, wait (up to `wait_s`) until it is gone,
        and remove it again if their removal failed half-way (a `dead` container)."""
        import docker.errors

        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.container.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if not _going(exc):
                    raise
                if time.monotonic() > deadline:
                    return  # still there: the next start removes it (it carries the run label)
            except Exception as exc:
                if not engine_unreachable(exc):
                    raise
                return
            time.sleep(0.5)


def _going(exc: Any) -> bool:
    """The container is gone (404), or being removed by someone else (409: "dead or marked for
    removal", "removal already in progress")."""
    return exc.status_code in (404, 409)


class EngineWatch:
    """Knows when the engine goes away (stopped, restarted) by holding its event stream open.

    dockerd closes its API before it stops the containers, so `lost` is set before any container
    is seen dead: a restart is told apart from entries that crashed.
    """

    def __init__(self) -> None:
        import docker

        self.lost = threading.Event()
        self._closing = threading.Event()
        # Its own client without a read timeout: the stream may see no event for hours.
        self._sdk = docker.from_env(timeout=7 * 24 * 3600)
        with engine_calls("following its events"):
            self._stream = self._sdk.events(decode=True)
        self._thread = threading.Thread(target=self._follow, name="engine-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):
            for _ in self._stream:
                pass
        if not self._closing.is_set():
            self.lost.set()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(Exception):
            self._stream.close()
        self._thread.join(timeout=5)
        self._sdk.close()


def start_container(
    sdk: Any,
    image: str,
    *,
    labels: Mapping[str, str],
    network: str | None = None,
    mem_limit: str | None = None,
    gpu: int | None = None,
    environment: Mapping[str, str] | None = None,
    name: str | None = None,
) -> RunningContainer:
    """Start `image` detached. On `network` (an internal one: no way out) the harness reaches it at
    its address there; otherwise its port 80 is published on 127.0.0.1 only, at a free port.
    `gpu`: the one GPU it may see."""
    import docker.errors

    options: dict[str, Any] = {
        "detach": True,
        "labels": {LABEL: "true", **labels},
        "environment": dict(environment or {}),
        "name": name,
    }
    if mem_limit:
        options["mem_limit"] = mem_limit
    if gpu is not None:
        options["device_requests"] = [device_request(gpu)]
        options["environment"].update(gpu_environment(gpu))
    if network:
        options["network"] = network
    else:
        options["ports"] = {"80/tcp": ("127.0.0.1", None)}
    try:
        with engine_calls(f"starting a container of {image}"):
            container = sdk.containers.run(image, **options)
        container.reload()
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"could not start a container of {image}: {exc}") from exc
    settings = container.attrs["NetworkSettings"]
    if network:
        url = f"http://{settings['Networks'][network]['IPAddress']}:80"
    else:
        url = f"http://127.0.0.1:{settings['Ports']['80/tcp'][0]['HostPort']}"
    return RunningContainer(container, url)


def device_request(gpu: int) -> Any:
    """Docker's request for exactly GPU `gpu` (what `docker run --gpus device=N` sends)."""
    from docker.types import DeviceRequest

    return DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])


def has_nvidia_runtime(sdk: Any) -> bool:
    """Whether the engine can hand out GPUs (the NVIDIA Container Toolkit's runtime)."""
    return "nvidia" in sdk.info().get("Runtimes", {})


def resolve_gpus(sdk: Any, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    """The GPUs entries get: `requested`, or by default every GPU when the engine can hand them
    out (an NVIDIA runtime). The engine is taken to run on this machine: pass --gpus otherwise."""
    runtime = has_nvidia_runtime(sdk)
    if requested is None:
        return detect_gpus() if runtime else ()
    if requested and not runtime:
        raise ConfigError(
            f"--gpus {','.join(map(str, requested))}: the Docker engine has no NVIDIA runtime "
            "(install the NVIDIA Container Toolkit), or pass --gpus none"
        )
    return requested


def remove_containers(
    sdk: Any, filters: Mapping[str, str], *, keep: Callable[[Any], bool] = lambda c: False
) -> int:
    """Remove the containers (running or not) that match `filters` (the SDK's: `label`,
    `ancestor`, ...), except those `keep` keeps; returns how many. One that someone else removes
    meanwhile counts as removed."""
    removed = 0
    # ignore_removed: the SDK inspects each container it lists, and another remover (a Ray
    # task sweeping the same engine) may have taken one away in between.
    for container in sdk.containers.list(all=True, filters=dict(filters), ignore_removed=True):
        if keep(container):
            continue
        with contextlib.suppress(Exception):  # being removed already: gone all the same
            container.remove(force=True)
        removed += 1
    return removed


def remove_quietly(thing: Any) -> None:
    """Remove a container, image or volume that may be gone already."""
    with contextlib.suppress(Exception):
        thing.remove(force=True)


@contextlib.contextmanager
def volume(sdk: Any, name: str, labels: Mapping[str, str]) -> Iterator[str]:
    """A named volume for the life of the block, removed after it."""
    import docker.errors

    try:
        created = sdk.volumes.create(name=name, labels=dict(labels))
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"could not create the volume {name}: {exc}") from exc
    try:
        yield str(created.name)
    finally:
        remove_quietly(created)


def run_detached(sdk: Any, image: str, **options: Any) -> Any:
    """`docker run -d image` with the SDK's options; InfrastructureError when it cannot start."""
    import docker.errors

    try:
        with engine_calls(f"starting a container of {image}"):
            return sdk.containers.run(image, detach=True, **options)
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"could not start a container of {image}: {exc}") from exc


def copy_out(container: Any, path: str, dest: Path) -> bool:
    """Copy `path` out of a (stopped) container into the file `dest` as a tar archive; False
    when the container has nothing at `path`."""
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return False
    with dest.open("wb") as file:
        for chunk in stream:
            file.write(chunk)
    return True
