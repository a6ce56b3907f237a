"""scripts/install-lock.sh installs a lock exactly, without the network and without resolving.

The wheels are made at test time in a local find-links folder that reproduces what broke
`.venv-helm` in December 2026: a locked package asks for a dependency with an extra
(`weasel` -> `smart-open[http]>=5.2.1`) and a release of that dependency newer than the lock's
pin is on the index. pip resolves such an extra against the index unless told not to resolve.
"""

from __future__ import annotations

import base64
import ensurepip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, _unavailable

INSTALL_LOCK = REPO / "scripts" / "install-lock.sh"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wheel(folder: Path, name: str, version: str, *requires: str, extras: str = "") -> Path:
    """A minimal pure-Python wheel: one module and the dist-info pip reads."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if extras:
        metadata += f"Provides-Extra: {extras}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _bundled_pip() -> Path:
    """The pip wheel Python ships for ensurepip: the one pip on disk with no network."""
    bundled = Path(ensurepip.__file__).parent / "_bundled"
    wheels = sorted(bundled.glob("pip-*.whl"))
    if not wheels:
        _unavailable(f"this Python ships no pip wheel in {bundled}")
    return wheels[-1]


def _lock(path: Path, wheels: list[Path]) -> Path:
    """A pip-compile shaped lock pinning each wheel with its hash."""
    lines = ["# a lock as pip-compile writes it"]
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{_sha256(wheel)}", "    # via test"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def index(tmp_path: Path) -> dict[str, Path]:
    """The find-links folder: a==1 asks for b[x]>=1 and d; b 1.0 (locked) and 2.0 (newer)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    pip = Path(shutil.copy(_bundled_pip(), folder))
    return {
        "pip": pip,
        "a": _wheel(folder, "a", "1.0", "b[x]>=1", "d"),
        "b": _wheel(folder, "b", "1.0", 'c>=1; extra == "x"', extras="x"),
        "b2": _wheel(folder, "b", "2.0", 'c>=1; extra == "x"', extras="x"),
        "c": _wheel(folder, "c", "1.0"),
        "d": _wheel(folder, "d", "1.0"),
        "folder": folder,
    }


def _offline_env(index: dict[str, Path]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # this machine's pip configuration adds indexes
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(index["folder"]),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHON": sys.executable,
    }
    return env


def _install(
    venv: Path, lock: Path, env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL_LOCK), *options, str(venv), str(lock)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _installed(venv: Path, env: dict[str, str]) -> dict[str, str]:
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return {package["name"]: package["version"] for package in json.loads(listing)}


def test_resolving_install_of_the_lock_breaks_on_the_newer_release(
    index: dict[str, Path], tmp_path: Path
) -> None:
    """The fixture reproduces the failure: how the Makefile installed a lock until December 2026."""
    lock = _lock(tmp_path / "lock.txt", [index["a"], index["b"], index["c"], index["d"]])
    env = _offline_env(index)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(lock)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0
    assert "b[x]>=1" in result.stderr and "b-2.0" in result.stderr, result.stderr


def test_installs_exactly_the_locked_versions(index: dict[str, Path], tmp_path: Path) -> None:
    wheels = [index["pip"], index["a"], index["b"], index["c"], index["d"]]
    lock = _lock(tmp_path / "lock.txt", wheels)
    venv = tmp_path / "venv"
    result = _install(venv, lock, _offline_env(index))
    assert result.returncode == 0, result.stderr
    installed = _installed(venv, _offline_env(index))
    pip_version = index["pip"].name.split("-")[1]
    assert {name: installed.get(name) for name in ("pip", "a", "b", "c", "d")} == {
        "pip": pip_version,
        "a": "1.0",
        "b": "1.0",  # not 2.0, the newer release on the index
        "c": "1.0",
        "d": "1.0",
    }
    # A second run over the same venv is a no-op that still passes pip check.
    again = _install(venv, lock, _offline_env(index))
    assert again.returncode == 0, again.stderr


def test_a_lock_missing_a_dependency_fails_naming_it(
    index: dict[str, Path], tmp_path: Path
) -> None:
    lock = _lock(tmp_path / "lock.txt", [index["pip"], index["a"], index["b"], index["c"]])
    result = _install(tmp_path / "venv", lock, _offline_env(index))
    assert result.returncode == 1
    assert "is incomplete or inconsistent" in result.stderr
    assert re.search(r"a 1\.0 requires d, which is not installed", result.stderr), result.stderr
    # Declared but never imported (crfm-helm's torch): allowed by name, and only that name.
    allowed = _install(tmp_path / "venv", lock, _offline_env(index), "--allow-missing", "d")
    assert allowed.returncode == 0, allowed.stderr
    other = _install(tmp_path / "venv", lock, _offline_env(index), "--allow-missing", "e")
    assert other.returncode == 1, other.stderr


def test_a_lock_that_pins_no_pip_is_refused(index: dict[str, Path], tmp_path: Path) -> None:
    lock = _lock(tmp_path / "lock.txt", [index["a"], index["b"], index["c"], index["d"]])
    result = _install(tmp_path / "venv", lock, _offline_env(index))
    assert result.returncode == 2
    assert "pins no pip" in result.stderr
    assert not (tmp_path / "venv").exists()  # refused before anything was made


def test_every_lock_the_makefile_installs_goes_through_the_routine() -> None:
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    direct = [
        line.strip()
        for line in makefile.splitlines()
        if re.search(r"pip install .*-r ", line) or re.search(r"pip install .*lockfiles/", line)
    ]
    assert direct == [], "a lock installed around scripts/install-lock.sh"
    installed = set(re.findall(r"\$\(INSTALL_LOCK\)[^\n]*", makefile))
    locks = {lock for line in installed for lock in re.findall(r"lockfiles/[\w-]+\.txt", line)}
    assert locks == {
        "lockfiles/dev.txt",
        "lockfiles/helm.txt",
        "lockfiles/helm-core.txt",
        "lockfiles/ray.txt",
    }
    for first in ("dev.txt", "helm.txt", "ray.txt"):  # the first lock of each install pins pip
        assert re.search(r"^pip==\S+ \\$", (REPO / "lockfiles" / first).read_text(), re.M), first
