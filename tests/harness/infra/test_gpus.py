"""One GPU per entry (harness/infra/gpus.py). No GPU on this machine: the pool is tested through its
logic under concurrency and failures, and through the Docker request it makes (as the engine
receives it, on a real engine)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError
from harness.infra import docker as engine
from harness.infra.docker import device_request, resolve_gpus
from harness.infra.gpus import GpuPool, parse_gpus
from tests.conftest import TEST_LABELS


def test_parse_gpus() -> None:
    assert parse_gpus("0,1,2,3") == (0, 1, 2, 3)
    assert parse_gpus("none") == ()
    for bad in ("0,0", "-1", "a", ""):
        with pytest.raises(ConfigError, match="--gpus"):
            parse_gpus(bad)


class _Engine:
    def __init__(self, runtimes: dict[str, Any]) -> None:
        self.runtimes = runtimes

    def info(self) -> dict[str, Any]:
        return {"Runtimes": self.runtimes}


def test_gpus_need_an_engine_that_can_hand_them_out() -> None:
    assert resolve_gpus(_Engine({"runc": {}}), None) == ()
    assert resolve_gpus(_Engine({"nvidia": {}}), (2, 3)) == (2, 3)
    with pytest.raises(ConfigError, match="no NVIDIA runtime"):
        resolve_gpus(_Engine({"runc": {}}), (0,))


@settings(max_examples=40, deadline=None)
@given(
    gpus=st.lists(st.integers(0, 15), min_size=1, max_size=4, unique=True),
    holders=st.lists(st.tuples(st.floats(0, 0.003), st.booleans()), min_size=1, max_size=12),
)
def test_the_pool_never_gives_a_gpu_to_two_holders_and_always_gets_it_back(
    gpus: list[int], holders: list[tuple[float, bool]]
) -> None:
    pool = GpuPool(gpus)
    holding: dict[int, int] = {}
    lock = threading.Lock()
    clashes: list[int] = []
    served: list[int] = []

    def entry(hold_s: float, fails: bool) -> None:
        try:
            with pool.lease() as gpu:
                assert gpu is not None
                with lock:
                    holding[gpu] = holding.get(gpu, 0) + 1
                    if holding[gpu] > 1:
                        clashes.append(gpu)
                time.sleep(hold_s)
                with lock:
                    holding[gpu] -= 1
                    served.append(gpu)
                if fails:
                    raise RuntimeError("the entry crashed")
        except RuntimeError:
            pass

    threads = [threading.Thread(target=entry, args=holder) for holder in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == []
    assert len(served) == len(holders) and set(served) <= set(gpus)
    assert sorted(pool.free) == sorted(gpus)


def test_an_empty_pool_serves_on_the_cpu_and_a_stopped_wait_gives_up() -> None:
    with GpuPool(()).lease() as gpu:
        assert gpu is None
    pool = GpuPool((0,))
    stopping = threading.Event()
    with pool.lease():
        stopping.set()
        with pytest.raises(InterruptedError), pool.lease(stopping):
            pass
    assert pool.free == (0,)


@pytest.mark.docker
def test_the_container_is_asked_for_exactly_its_gpu(docker_client: Any, base_image: str) -> None:
    """The request as the engine stores it: one device id, and an environment that overrides an
    image's own NVIDIA_VISIBLE_DEVICES=all. (The container is created, not started: no GPU here.)"""
    assert device_request(3).device_ids == ["3"]
    created: dict[str, Any] = {}

    class _CreateOnly:
        """The real engine, but `run` only creates: starting needs the GPU this machine lacks."""

        def __init__(self, sdk: Any) -> None:
            self.containers = self
            self.sdk = sdk

        def run(self, image: str, **options: Any) -> Any:
            options.pop("detach")
            container = self.sdk.containers.create(image, ["sleep", "1"], **options)
            created["container"] = container
            raise StopIteration  # what the harness does next needs a running container

    with pytest.raises(StopIteration):
        engine.start_container(
            _CreateOnly(docker_client),
            base_image,
            labels=TEST_LABELS,
            gpu=3,
            environment={"NVIDIA_VISIBLE_DEVICES": "all"},
        )
    container = created["container"]
    try:
        container.reload()
        requests = container.attrs["HostConfig"]["DeviceRequests"]
        assert requests == [
            {
                "Driver": "",
                "Count": 0,
                "DeviceIDs": ["3"],
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ]
        assert "NVIDIA_VISIBLE_DEVICES=3" in container.attrs["Config"]["Env"]
        assert "NVIDIA_VISIBLE_DEVICES=all" not in container.attrs["Config"]["Env"]
    finally:
        container.remove(force=True)
