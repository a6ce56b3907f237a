"""Every lockfile pins every requirement exactly, with at least one hash."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCKS = sorted((REPO / "lockfiles").glob("*.txt"))


def _requirements(lock: Path) -> list[str]:
    """The requirement entries of a pip-compile output, continuation lines joined."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] not in "# -"]


def test_every_lock_is_compiled_from_an_in_file() -> None:
    assert {lock.stem for lock in LOCKS} >= {"dev", "helm", "serve", "train"}
    for lock in LOCKS:
        assert lock.with_suffix(".in").exists() or lock.stem == "helm-core", lock


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_requirement_is_pinned_with_a_hash(lock: Path) -> None:
    requirements = _requirements(lock)
    assert requirements
    for requirement in requirements:
        assert re.match(r"^[A-Za-z0-9_.\-]+==[^\s;]+ ", requirement), requirement
        assert "--hash=sha256:" in requirement, requirement


def test_image_locks_carry_pypis_torch_and_its_cuda_wheels() -> None:
    for name in ("serve", "train"):
        pins = {r.split("==")[0]: r for r in _requirements(REPO / "lockfiles" / f"{name}.txt")}
        assert pins["torch"].startswith("torch==2.13.0 "), "not PyPI's build (a +local version?)"
        assert any(pkg.startswith("nvidia-") for pkg in pins), f"{name}.txt has no CUDA wheels"


def test_training_image_shares_the_inference_images_versions() -> None:
    def pins(name: str) -> dict[str, str]:
        reqs = _requirements(REPO / "lockfiles" / f"{name}.txt")
        return {r.split("==")[0]: r.split()[0] for r in reqs}

    serve, train = pins("serve"), pins("train")
    assert {pkg: train[pkg] for pkg in serve} == serve
