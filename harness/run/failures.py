"""Why an entry failed, read from what it left behind: its build log, its dead container, its GPU.

    classify_build_log(log)                      -> BuildFailure(cause, reason)
    classify_container(exit_code, oom_killed, logs) -> ContainerFailure(status, reason)
    GpuMemorySampler.from_nvml()                 -> (sampler or None, what happened)

Causes of a failed build, in the order they are tried (the first that matches wins, because a
network failure also ends in pip's "no matching distribution", and a compile failure may mention
missing headers):

    network                 DNS, refused or timed-out connections, TLS failures, unreachable hosts
    missing-file            COPY/ADD of something not in the build context, a script not found
    compile-error           building a wheel or extension failed (flash-attn, a C compiler, nvcc)
    dependency-resolution   pip could not find or reconcile the pinned versions
    unknown                 none of the above; the reason quotes the last error line

Reasons are short, single-line and redacted: they go into the store and the leaderboard.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from harness.competition import GIB
from harness.secrets import redact
from harness.store import Status

_REASON_CHARS = 200


class BuildCause(StrEnum):
    NETWORK = "network"
    MISSING_FILE = "missing-file"
    COMPILE_ERROR = "compile-error"
    DEPENDENCY_RESOLUTION = "dependency-resolution"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildFailure:
    cause: BuildCause
    reason: str


@dataclass(frozen=True)
class ContainerFailure:
    status: Status  # Status.OOM or Status.CRASHED
    reason: str


def _patterns(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)


# Within a cause, the patterns go from the most telling line to quote to the least.
_BUILD_CAUSES: tuple[tuple[BuildCause, str, tuple[re.Pattern[str], ...]], ...] = (
    (
        BuildCause.NETWORK,
        "network failure",
        _patterns(
            r"temporary failure in name resolution",
            r"name or service not known",
            r"could not resolve host",
            r"no such host",
            r"failed to establish a new connection",
            r"network is unreachable",
            r"connection (?:refused|timed out|reset)",
            r"read ?timed ?out",
            r"certificate[_ ]verify[_ ]failed",
            r"couldn't connect to 'https?://",
            r"failed to (?:resolve source metadata|fetch|do request)",
        ),
    ),
    (
        BuildCause.MISSING_FILE,
        "a file is missing from the build context",
        _patterns(
            r"failed to compute cache key",
            r"failed to calculate checksum of ref",
            r"COPY failed",
            r"ADD failed",
            r"file not found in build context",
            r"can't open file .*No such file or directory",
        ),
    ),
    (
        BuildCause.COMPILE_ERROR,
        "a compilation failed",
        _patterns(
            r"failed building wheel for",
            r"could not build wheels for",
            r"error compiling objects for extension",
            r"command '\S*(?:gcc|g\+\+|nvcc|cc|c\+\+)' failed",
            r"fatal error: \S+\.h(?:pp)?: No such file or directory",
            r"CUDA_HOME environment variable is not set",
            r"nvcc: (?:not found|fatal)",
            r"CMake Error",
            r"make: \*\*\* .* Error",
            r"(?:to build wheel|bdist_wheel|metadata) did not run successfully",
        ),
    ),
    (
        BuildCause.DEPENDENCY_RESOLUTION,
        "dependency resolution failed",
        _patterns(
            r"conflicting dependencies",
            r"ResolutionImpossible",
            r"no matching distribution found for",
            r"could not find a version that satisfies the requirement",
            r"THESE PACKAGES DO NOT MATCH THE HASHES",
            r"Unable to locate package",  # apt
            r"has no installation candidate",
        ),
    ),
)

# BuildKit's plain progress prefixes each line with a step number and a timestamp.
_BUILDKIT_PREFIX = re.compile(r"^#\d+ (?:\d+\.\d+ )?")
_ERROR_LINE = re.compile(r"\berror\b", re.IGNORECASE)


def _clean(line: str, pattern: re.Pattern[str] | None = None) -> str:
    """One log line made fit for a reason: unprefixed, redacted, cut around what matched."""
    line = redact(_BUILDKIT_PREFIX.sub("", line).strip())
    match = pattern.search(line) if pattern else None
    if len(line) <= _REASON_CHARS or match is None or match.end() <= _REASON_CHARS:
        return line[:_REASON_CHARS]
    start = max(0, match.start() - _REASON_CHARS // 3)
    return "…" + line[start : start + _REASON_CHARS]


def classify_build_log(log: str) -> BuildFailure:
    """The cause of a failed `docker build`, with a one-line reason quoting the log."""
    lines = log.splitlines()
    for cause, summary, patterns in _BUILD_CAUSES:
        for pattern in patterns:
            for line in lines:
                if pattern.search(line):
                    return BuildFailure(cause, f"{summary}: {_clean(line, pattern)}")
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    last = next((line for line in reversed(errors or lines) if line.strip()), "")
    reason = f"the build failed: {_clean(last)}" if last else "the build failed with an empty log"
    return BuildFailure(BuildCause.UNKNOWN, reason)


_OOM_IN_LOGS = re.compile(
    r"CUDA out of memory|CUDA error: out of memory"
    r"|OutOfMemoryError"  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
    r"|DefaultCPUAllocator: can't allocate memory",
    re.IGNORECASE,
)
_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b.*$")


def classify_container(exit_code: int | None, oom_killed: bool, logs: str) -> ContainerFailure:
    """Why a container died on its own: `oom` or `crashed`.

    Call it only for a container the harness did not stop itself: `docker stop` ends in a
    SIGKILL (exit 137) too when the server ignores SIGTERM.
    """
    if oom_killed:
        return ContainerFailure(Status.OOM, "out of memory: the kernel killed the container")
    match = _OOM_IN_LOGS.search(logs)
    if match:
        line = logs[logs.rfind("\n", 0, match.start()) + 1 :].partition("\n")[0]
        return ContainerFailure(Status.OOM, f"out of memory: {_clean(line, _OOM_IN_LOGS)}")
    if exit_code == 128 + signal.SIGKILL:
        return ContainerFailure(
            Status.OOM, "out of memory: killed by SIGKILL (exit 137), as the OOM killer does"
        )
    exceptions = [line for line in logs.splitlines() if _EXCEPTION_LINE.match(line)]
    last = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
    said = _clean(exceptions[-1] if exceptions else last)
    if exit_code is None:
        how = "the server stopped answering"
    elif exit_code > 128:
        how = f"the server was killed by {signal.Signals(exit_code - 128).name}"
    else:
        how = f"the server exited with code {exit_code}"
    return ContainerFailure(Status.CRASHED, f"{how}: {said}" if said else how)


class GpuMemorySampler:
    """Samples used GPU memory in a background thread and keeps the peak.

    The reader is injected so the decision can be tested without a GPU; `from_nvml` makes the real
    one. NVML reports the whole device's usage, which is the entry's on a GPU given to one entry.
    """

    def __init__(self, read_used_bytes: Callable[[], int], *, interval_s: float = 1.0) -> None:
        self._read = read_used_bytes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_bytes = 0
        self.samples = 0

    @classmethod
    def from_nvml(
        cls, device_index: int = 0, *, interval_s: float = 1.0
    ) -> tuple[Self | None, str]:
        """A sampler of one GPU through NVML, or None and why not (no pynvml, no GPU, no driver)."""
        try:
            import pynvml  # nvidia-ml-py; it loads anywhere, NVML answers only where a driver is
        except ImportError:
            return None, "GPU memory is not sampled: the pynvml module (nvidia-ml-py) is missing"
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        except pynvml.NVMLError as exc:
            return None, f"GPU memory is not sampled: NVML has no GPU {device_index} ({exc})"

        def read() -> int:
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

        return cls(read, interval_s=interval_s), (
            f"sampling GPU {device_index} ({total / GIB:.1f} GiB) every {interval_s:g} s"
        )

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval_s):
                return

    def sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._read())
        self.samples += 1

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="gpu-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def over_budget(self, budget_bytes: int) -> ContainerFailure | None:
        """An `oom` verdict when the peak went above the track's memory, else None."""
        if self.peak_bytes <= budget_bytes:
            return None
        return ContainerFailure(
            Status.OOM,
            f"GPU memory peaked at {self.peak_bytes / GIB:.1f} GiB, above the track's "
            f"{budget_bytes / GIB:.0f} GiB",
        )
