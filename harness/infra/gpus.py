"""One GPU per entry: the pool of a machine's GPUs (what the engine can hand out is docker.py's).

    gpus = docker.resolve_gpus(sdk, parse_gpus("0,1,2,3"))  # or None: every GPU it exposes
    pool = GpuPool(gpus)
    with pool.lease() as gpu:                        # blocks while every GPU is held
        start_container(..., gpu=gpu)                # device_requests=[device_ids=[gpu]]

A lease is returned however the block ends (an exception, an interrupt), and no GPU has two
holders. An empty pool (a machine without GPUs) leases None at once: entries run on the CPU.
The lease covers serving and evaluating only, so with `--jobs` above the GPU count the other
entries build while they wait.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from harness.errors import ConfigError


def parse_gpus(text: str) -> tuple[int, ...]:
    """`--gpus 0,1,2,3` (indexes as nvidia-smi numbers them), or `none` for no GPU."""
    if text.strip().lower() == "none":
        return ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--gpus takes GPU indexes like 0,1,2,3 (or none), got {text!r}"
        ) from None
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus takes distinct non-negative indexes, got {text!r}")
    return gpus


def detect_gpus() -> tuple[int, ...]:
    """The GPUs of this machine, by NVML or else nvidia-smi; () when there are none."""
    try:
        import pynvml  # nvidia-ml-py; it loads anywhere, NVML answers only where a driver is

        pynvml.nvmlInit()
        return tuple(range(int(pynvml.nvmlDeviceGetCount())))
    except Exception:  # no module, no driver, no device: try the command line
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(int(line) for line in out.split() if line.strip().isdigit())


def gpu_environment(gpu: int) -> dict[str, str]:
    """Environment that overrides an image's own `ENV NVIDIA_VISIBLE_DEVICES=all` (CUDA base
    images set it): under an nvidia default runtime, that variable alone would expose every GPU."""
    return {"NVIDIA_VISIBLE_DEVICES": str(gpu)}


class GpuPool:
    """GPUs leased one per holder; see the module docstring."""

    def __init__(self, gpus: Sequence[int]) -> None:
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"a GPU listed twice: {list(gpus)}")
        self.gpus = tuple(gpus)
        self._free = list(self.gpus)
        self._changed = threading.Condition()

    @property
    def free(self) -> tuple[int, ...]:
        with self._changed:
            return tuple(self._free)

    @contextmanager
    def lease(self, stopping: threading.Event | None = None) -> Iterator[int | None]:
        """One free GPU for the block (None when the pool is empty); waits while all are held.

        Raises InterruptedError when `stopping` is set while waiting: the batch is ending.
        """
        if not self.gpus:
            yield None
            return
        with self._changed:
            while not self._free:
                if stopping is not None and stopping.is_set():
                    raise InterruptedError("stopped while waiting for a GPU")
                self._changed.wait(timeout=0.5)
            gpu = self._free.pop(0)
        try:
            yield gpu
        finally:
            with self._changed:
                self._free.append(gpu)
                self._changed.notify()
