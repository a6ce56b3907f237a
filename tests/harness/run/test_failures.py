"""Failure classification on recorded build and container logs (tests/harness/run/data/failures)."""

from __future__ import annotations

import secrets
import string
import threading
from pathlib import Path

import pytest

from harness.competition import GIB, TRACKS
from harness.run.failures import (
    BuildCause,
    GpuMemorySampler,
    classify_build_log,
    classify_container,
)
from harness.store import Status

DATA = Path(__file__).parent / "data" / "failures"


def _log(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    ("log", "cause", "quoted"),
    [
        (
            "build-resolution-impossible.log",
            BuildCause.DEPENDENCY_RESOLUTION,
            "Cannot install -r requirements.txt (line 3) and accelerate==0.19.0",
        ),
        (
            "build-no-matching-distribution.log",
            BuildCause.DEPENDENCY_RESOLUTION,
            "No matching distribution found for transformers==4.99.0",
        ),
        ("build-flash-attn.log", BuildCause.COMPILE_ERROR, "Failed building wheel for flash-attn"),
        (
            "build-flash-attn-no-torch.log",
            BuildCause.COMPILE_ERROR,
            "Getting requirements to build wheel did not run successfully",
        ),
        ("build-missing-copy.log", BuildCause.MISSING_FILE, '"/merged_model": not found'),
        # pip ends with "no matching distribution" here too, but the cause is the network.
        ("build-network.log", BuildCause.NETWORK, "Temporary failure in name resolution"),
        (
            "build-hf-download.log",
            BuildCause.NETWORK,
            "couldn't connect to 'https://huggingface.co'",
        ),
        ("build-unknown.log", BuildCause.UNKNOWN, "did not complete successfully: exit code: 3"),
    ],
)
def test_build_logs(log: str, cause: BuildCause, quoted: str) -> None:
    failure = classify_build_log(_log(log))
    assert failure.cause is cause
    assert quoted in failure.reason
    assert "\n" not in failure.reason
    assert len(failure.reason) < 300
    assert not failure.reason.startswith("#")  # BuildKit's step prefix is dropped


def test_build_reasons_are_redacted() -> None:
    token = "hf_" + "".join(secrets.choice(string.ascii_letters) for _ in range(34))
    log = f"#7 4.2 fatal: unable to access 'https://u:{token}@hf.co/m/': Could not resolve host"
    reason = classify_build_log(log).reason
    assert token not in reason
    assert f"{token[:3]}…{token[-4:]}" in reason


def test_an_empty_build_log() -> None:
    assert classify_build_log("") == classify_build_log("\n \n")
    assert classify_build_log("").cause is BuildCause.UNKNOWN


def test_oom_from_the_kernel_the_exit_code_or_the_logs() -> None:
    assert classify_container(137, True, "").status is Status.OOM
    assert classify_container(137, False, "Loading model...").status is Status.OOM
    cuda = classify_container(1, False, _log("container-cuda-oom.log"))
    assert cuda.status is Status.OOM
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB" in cuda.reason
    cpu = "RuntimeError: [enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate "
    cpu += "memory: you tried to allocate 58720256000 bytes."
    assert classify_container(1, False, cpu).status is Status.OOM


def test_crashes_quote_the_last_exception() -> None:
    crash = classify_container(1, False, _log("container-crash.log"))
    assert crash.status is Status.CRASHED
    assert crash.reason.startswith("the server exited with code 1: ImportError: cannot import")
    segfault = classify_container(139, False, "Loading model...\n")
    assert segfault.reason == "the server was killed by SIGSEGV: Loading model..."
    assert classify_container(0, False, "").reason == "the server exited with code 0"
    assert classify_container(None, False, "").reason == "the server stopped answering"


def test_gpu_sampler_keeps_the_peak_and_judges_the_budget() -> None:
    # Injected samples: no GPU here. An A100 entry peaking at 30 GiB is over the 4090 budget.
    samples = iter([10 * GIB, 30 * GIB, 20 * GIB])
    done = threading.Event()

    def read() -> int:
        value = next(samples, None)
        if value is None:
            done.set()
            return 0
        return value

    with GpuMemorySampler(read, interval_s=0.001) as sampler:
        assert done.wait(5)
    assert sampler.peak_bytes == 30 * GIB
    assert sampler.samples >= 4
    assert sampler.over_budget(TRACKS["A100"].gpu_bytes) is None
    verdict = sampler.over_budget(TRACKS["4090"].gpu_bytes)
    assert verdict is not None and verdict.status is Status.OOM
    assert verdict.reason == "GPU memory peaked at 30.0 GiB, above the track's 24 GiB"


def test_no_nvml_means_no_sampler_and_says_why() -> None:
    # No GPU (and no pynvml) on this machine: the harness carries on without sampling.
    sampler, why = GpuMemorySampler.from_nvml()
    assert sampler is None
    assert why.startswith("GPU memory is not sampled")
