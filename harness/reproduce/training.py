"""The training half of `harness reproduce`: build the entry's training image, run it under the
time limit with a fresh output volume and the declared secrets (at run time only), sample its
memory peaks (the container's from the engine, the GPU's through NVML), collect and hash the
weights it left. What it takes and gives (ReproduceOptions, Manifest, Training) is in
harness/reproduce/options.py.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from harness.infra import docker as engine
from harness.infra.gpus import gpu_environment
from harness.reproduce.options import (
    REPRODUCE_LABEL,
    Manifest,
    ReproduceOptions,
    Stop,
    Training,
    Verdict,
    tail,
)
from harness.run.failures import GpuMemorySampler, classify_build_log
from harness.secrets import mask, redact


class _MemoryPeaks:
    """Container memory from the engine's stats (and the GPU's through NVML): peaks, in bytes."""

    def __init__(self, gpu: GpuMemorySampler | None, gpu_note: str) -> None:
        self.gpu = gpu
        self.notes = [gpu_note] if gpu_note else []
        self.peaks: dict[str, int] = {}

    def sample(self, container: Any) -> None:
        with suppress(Exception):  # stats of a container that is exiting may be empty or fail
            stats = container.stats(stream=False, one_shot=True).get("memory_stats", {})
            # As `docker stats` shows it: page cache that can be dropped does not count.
            inner = stats.get("stats", {})
            cache = inner.get("total_inactive_file", inner.get("inactive_file", 0))
            if "usage" in stats:
                self._keep("container_memory_sampled", int(stats["usage"]) - int(cache))
            if "max_usage" in stats:  # cgroup v1 only: the kernel's own peak
                self._keep("container_memory_max_usage", int(stats["max_usage"]))

    def _keep(self, key: str, value: int) -> None:
        self.peaks[key] = max(self.peaks.get(key, 0), value)

    def result(self, interval_s: float) -> tuple[dict[str, int], str]:
        peaks = dict(self.peaks)
        if self.gpu is not None:
            peaks["gpu_memory"] = self.gpu.peak_bytes
        notes = list(self.notes)
        if not self.peaks:
            notes.append("container memory was not measured (the engine returned no stats)")
        else:
            notes.append(f"container memory sampled every {interval_s:g} s from the engine")
            if "container_memory_max_usage" not in peaks:
                notes.append("no kernel peak (cgroup v2): the sampled peak may miss short spikes")
        return peaks, "; ".join(notes)


def _secret_env(manifest: Manifest, options: ReproduceOptions) -> dict[str, str]:
    source = os.environ if options.environment is None else options.environment
    return {name: source[name] for name in manifest.secrets if source.get(name)}


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    text = redact(text)
    for value in secrets.values():
        text = text.replace(value, mask(value))
    return text


def build_training_image(
    context: Path, manifest: Manifest, slug: str, options: ReproduceOptions, out: Path
) -> str:
    dockerfile = context / manifest.train_dockerfile
    if not dockerfile.is_file():
        raise Stop(Verdict.BUILD_FAILED, f"the entry has no {manifest.train_dockerfile}")
    log = out / "train-build.log"
    result = engine.build(
        dockerfile.parent,
        tag=f"harness-reproduce/{slug}:train",
        log_path=log,
        dockerfile=dockerfile,
        build_args={"BASE_IMAGE": options.base_image} if options.base_image else None,
        labels={REPRODUCE_LABEL: slug, **options.labels},
        timeout=options.build_timeout_s,
    )
    text = redact(log.read_text(errors="replace"))
    log.write_text(text)
    if result.timed_out:
        minutes = options.build_timeout_s / 60
        raise Stop(
            Verdict.BUILD_FAILED,
            f"the training image's build ran past its {minutes:.0f}-minute limit",
            tail(text),
        )
    if not result.ok:
        failure = classify_build_log(text)
        raise Stop(
            Verdict.BUILD_FAILED,
            f"the training image did not build: {failure.cause.value}: {failure.reason}",
            tail(text),
        )
    return result.image


def train(
    sdk: Any,
    image: str,
    manifest: Manifest,
    slug: str,
    options: ReproduceOptions,
    out: Path,
    gpu: int | None,
) -> tuple[Training, str | None]:
    """Run the training container to its end or the time limit; the weights of a finished run
    land in out/weights. Returns how it went, and why no weights were collected if none were."""
    secrets = _secret_env(manifest, options)
    sampler, gpu_note = (
        GpuMemorySampler.from_nvml(gpu) if gpu is not None else (None, "no GPU in use")
    )
    memory = _MemoryPeaks(sampler, gpu_note)
    labels = {engine.LABEL: "true", REPRODUCE_LABEL: slug, **options.labels}
    name = f"harness-reproduce-{slug}-{uuid.uuid4().hex[:8]}"
    with engine.volume(sdk, name, labels) as volume:
        mounts = {
            str(host.resolve()): {"bind": path, "mode": "ro"}
            for host, path in options.mounts.items()
        }
        run: dict[str, Any] = {
            "labels": labels,
            "environment": secrets,
            "volumes": {volume: {"bind": manifest.volume_path, "mode": "rw"}, **mounts},
        }
        if gpu is not None:
            run["device_requests"] = [engine.device_request(gpu)]
            run["environment"] = {**secrets, **gpu_environment(gpu)}
        container = engine.run_detached(sdk, image, **run)
        try:
            started = time.monotonic()
            if sampler:
                sampler.start()
            try:
                timed_out = _wait(container, started + options.time_limit_s, memory, options)
            finally:
                if sampler:
                    sampler.stop()
            wall = time.monotonic() - started
            state = container.attrs.get("State", {})
            logs = _scrub(bytes(container.logs()).decode(errors="replace"), secrets)
            (out / "train.log").write_text(logs)
            peaks, note = memory.result(options.stats_interval_s)
            exit_code = None if timed_out else state.get("ExitCode")
            training = Training(
                finished=not timed_out and exit_code == 0,
                timed_out=timed_out,
                exit_code=exit_code,
                wall_time_s=round(wall, 1),
                peak_memory=peaks,
                memory_note=note,
                secrets_passed=tuple(sorted(secrets)),
                secrets_missing=tuple(sorted(set(manifest.secrets) - set(secrets))),
            )
            missing = _collect(container, manifest.weights_path, out / "weights")
            return training, missing if training.finished else None
        finally:
            engine.remove_quietly(container)


def _wait(container: Any, deadline: float, memory: _MemoryPeaks, options: ReproduceOptions) -> bool:
    """Sample memory until the container exits; kill it at `deadline`. True when killed."""
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            return False
        if time.monotonic() >= deadline:
            with suppress(Exception):
                container.kill()
            container.wait()
            container.reload()
            return True
        memory.sample(container)
        time.sleep(min(options.stats_interval_s, max(0.0, deadline - time.monotonic())))


def _collect(container: Any, weights_path: str, dest: Path) -> str | None:
    """Copy the weights out of the stopped container (its volume included) as the host's user;
    None when done, else why there are none."""
    with tempfile.TemporaryDirectory(prefix="harness-weights-", dir=dest.parent) as tmp:
        archive = Path(tmp) / "weights.tar"
        if not engine.copy_out(container, weights_path, archive):
            return f"the training ended without writing its weights to {weights_path}"
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        archive.unlink()
        shutil.move(Path(tmp) / "x" / posixpath.basename(weights_path.rstrip("/")), dest)
    if not any(path.is_file() for path in dest.rglob("*")):
        return f"the training left {weights_path} empty"
    return None


def hash_files(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `folder`, by POSIX path relative to it."""
    hashes: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        hashes[path.relative_to(folder).as_posix()] = {
            "sha256": digest.hexdigest(),
            "bytes": path.stat().st_size,
        }
    return hashes
