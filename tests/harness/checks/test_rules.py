"""Every rule on a bad entry of its own, the team's own submission shape as the clean negative."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.checks import EntryReport, Finding, Limits, check_entries, check_entry
from harness.errors import ConfigError
from tests.harness.checks.conftest import (
    DIGEST,
    GOOD_DOCKERFILE,
    GOOD_FILES,
    Files,
    rules,
    write_files,
    write_zip,
)

Entry = Callable[..., EntryReport]


def _with_dockerfile(extra: str, **files: str) -> Files:
    return {**GOOD_FILES, "Dockerfile": GOOD_DOCKERFILE + extra, **files}


def test_the_team_submission_shape_has_no_error_or_warning(entry: Entry) -> None:
    report = entry(GOOD_FILES)
    assert report.status == "ok"
    assert report.dockerfile == "Dockerfile"
    assert [(f.rule, f.severity) for f in report.findings] == [("secret-placeholder", "info")]


# (name, files, the (rule, severity, path) that must be found)
BAD: list[tuple[str, Files, tuple[str, str, str]]] = [
    (
        "no Dockerfile, only a near miss",
        {"docker/dockerfile.gpu": "FROM x\n"},
        ("no-dockerfile", "error", "."),
    ),
    (
        "entry.yaml names a missing file",
        {**GOOD_FILES, "entry.yaml": "dockerfile: docker/Dockerfile\n"},
        ("no-dockerfile", "error", "entry.yaml"),
    ),
    (
        "entry.yaml escapes the entry",
        {**GOOD_FILES, "entry.yaml": "dockerfile: ../other/Dockerfile\n"},
        ("malformed-entry", "error", "entry.yaml"),
    ),
    (
        "entry.yaml is not YAML",
        {**GOOD_FILES, "entry.yaml": "dockerfile: [unclosed\n"},
        ("malformed-entry", "error", "entry.yaml"),
    ),
    (
        "placeholder token in ENV",
        _with_dockerfile('ENV HUGGINGFACE_TOKEN="YOUR_TOKEN"\n'),
        ("secret-in-image-config", "warning", "Dockerfile"),
    ),
    (
        "placeholder is also pointed out",
        _with_dockerfile('ENV HUGGINGFACE_TOKEN="YOUR_TOKEN"\n'),
        ("secret-placeholder", "info", "Dockerfile"),
    ),
    (
        "ENV copies a build arg token into the image",
        _with_dockerfile("ARG HF_TOKEN\nENV HF_TOKEN=$HF_TOKEN\n"),
        ("secret-in-image-config", "warning", "Dockerfile"),
    ),
    (
        "random-looking value of unknown shape in a token ENV",
        _with_dockerfile("ENV API_KEY=Zq8rT2mWx9LpV4kQ7nB3yH6d\n"),
        ("secret-in-image-config", "error", "Dockerfile"),
    ),
    (
        "pip install without a version",
        _with_dockerfile("RUN pip install transformers==4.40.0 peft\n"),
        ("unpinned-dependency", "error", "Dockerfile"),
    ),
    (
        "unquoted >= becomes a redirect",
        _with_dockerfile("RUN pip install torch>=2.0\n"),
        ("unpinned-dependency", "error", "Dockerfile"),
    ),
    (
        "git+ URL on a branch",
        _with_dockerfile("RUN python -m pip install git+https://github.com/a/b.git@main\n"),
        ("unpinned-dependency", "error", "Dockerfile"),
    ),
    (
        "--pre",
        _with_dockerfile("RUN pip install --pre torch==2.13.0\n"),
        ("unpinned-dependency", "error", "Dockerfile"),
    ),
    (
        "nightly index",
        _with_dockerfile(
            "RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/nightly/cu121\n"
        ),
        ("unpinned-dependency", "error", "Dockerfile"),
    ),
    (
        "requirements with ranges",
        {**GOOD_FILES, "requirements.txt": "torch>=2.0\ntransformers\npeft~=0.21\n"},
        ("unpinned-dependency", "error", "requirements.txt"),
    ),
    (
        "pre-release in requirements",
        {**GOOD_FILES, "requirements-extra.txt": "bitsandbytes==0.45.0.dev0\n"},
        ("unpinned-dependency", "error", "requirements-extra.txt"),
    ),
    (
        "requirements installed without hashes",
        _with_dockerfile(
            "COPY deps.txt /tmp/\nRUN pip install -r /tmp/deps.txt\n",
            **{"deps.txt": "torch==2.13.0\n"},
        ),
        ("unpinned-dependency", "warning", "Dockerfile"),
    ),
    (
        "latest base image",
        {**GOOD_FILES, "Dockerfile": "FROM pytorch/pytorch:latest\nCMD x\n"},
        ("unpinned-base-image", "error", "Dockerfile"),
    ),
    (
        "untagged base image",
        {**GOOD_FILES, "Dockerfile": "FROM ubuntu\nCMD x\n"},
        ("unpinned-base-image", "error", "Dockerfile"),
    ),
    (
        "nightly base image",
        {**GOOD_FILES, "Dockerfile": "FROM pytorch/pytorch:nightly-devel\nCMD x\n"},
        ("unpinned-base-image", "error", "Dockerfile"),
    ),
    (
        "tag without digest",
        {**GOOD_FILES, "Dockerfile": "FROM python:3.11-slim\nCMD x\n"},
        ("unpinned-base-image", "warning", "Dockerfile"),
    ),
    (
        "base image from an ARG without default",
        {**GOOD_FILES, "Dockerfile": "ARG BASE\nFROM $BASE\nCMD x\n"},
        ("unpinned-base-image", "warning", "Dockerfile"),
    ),
    (
        "COPY of a missing file",
        _with_dockerfile("COPY adapter/ /opt/adapter/\n"),
        ("missing-artifact", "error", "Dockerfile"),
    ),
    (
        "COPY of a file excluded by .dockerignore",
        _with_dockerfile("COPY .env /app/.env\n", **{".env": "A=1\n"}),
        ("missing-artifact", "error", "Dockerfile"),
    ),
    (
        "COPY from the author's home",
        _with_dockerfile("COPY /home/alice/ckpt /opt/ckpt\n"),
        ("missing-artifact", "error", "Dockerfile"),
    ),
    (
        "author's path in code",
        {**GOOD_FILES, "server/data.py": 'PATH = "/home/alice/data/train.jsonl"\n'},
        ("local-path", "error", "server/data.py"),
    ),
    (
        "author's Windows path in config",
        {**GOOD_FILES, "cfg.yaml": 'data: "C:\\\\Users\\\\bob\\\\train.json"\n'},
        ("local-path", "error", "cfg.yaml"),
    ),
    (
        "macOS path in a notebook cell",
        {
            **GOOD_FILES,
            "nb.ipynb": json.dumps(
                {"cells": [{"cell_type": "code", "source": ["open('/Users/carol/x.csv')"]}]}
            ),
        },
        ("local-path", "error", "nb.ipynb"),
    ),
    (
        "wget of a moving URL",
        _with_dockerfile("RUN wget https://example.com/latest/model.bin\n"),
        ("remote-artifact", "warning", "Dockerfile"),
    ),
    (
        "ADD of a URL without checksum",
        _with_dockerfile("ADD https://example.com/weights.tar.gz /opt/\n"),
        ("remote-artifact", "warning", "Dockerfile"),
    ),
    (
        "git clone without checkout",
        _with_dockerfile("RUN git clone https://github.com/a/b && pip install -e ./b\n"),
        ("remote-artifact", "warning", "Dockerfile"),
    ),
]


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_each_rule_on_a_bad_entry(
    entry: Entry, files: Files, expected: tuple[str, str, str]
) -> None:
    report = entry(files)
    assert expected in rules(report)
    assert report.status == ("flagged" if expected[1] == "error" else report.status)


NOT_FLAGGED: list[tuple[str, str]] = [
    ("pip pins and hash-checked lock", "RUN pip install torch==2.13.0 'numpy==2.1.0'\n"),
    ("git+ at a commit", f"RUN pip install git+https://github.com/a/b@{'ab' * 20}\n"),
    ("redirect of output is not a range", "RUN pip install torch==2.13.0 > /dev/null 2>&1\n"),
    ("wget with a checksum", "RUN wget https://x.org/a.tgz && echo 'ab  a.tgz' | sha256sum -c\n"),
    ("versioned download", "RUN curl -LO https://github.com/o/r/releases/download/v1.2.3/t.tgz\n"),
    (
        "clone then checkout",
        f"RUN git clone https://github.com/a/b && git -C b checkout {'cd' * 20}\n",
    ),
    ("ADD with checksum", f"ADD --checksum={DIGEST} https://x.org/a.tgz /opt/\n"),
    ("COPY from a stage", "COPY --from=base /opt/venv /opt/venv\n"),
    ("COPY of a glob", "COPY server/*.py /srv/\n"),
    ("heredoc RUN", "RUN <<EOF\npip install --require-hashes -r /tmp/requirements.txt\nEOF\n"),
    ("a /home path inside the image", "WORKDIR /home/app\nRUN mkdir -p /home/app/cache\n"),
    ("uv with a pin", "RUN uv pip install --system transformers==4.40.0\n"),
]


@pytest.mark.parametrize("extra", [c[1] for c in NOT_FLAGGED], ids=[c[0] for c in NOT_FLAGGED])
def test_pinned_and_verified_is_not_flagged(entry: Entry, extra: str) -> None:
    report = entry(_with_dockerfile(extra))
    assert [f for f in report.findings if f.severity != "info"] == []


def test_copy_in_a_stage_the_target_does_not_need_is_not_missing(entry: Entry) -> None:
    files = dict(GOOD_FILES)
    del files["model/config.json"]  # WEIGHTS=local needs it...
    assert ("missing-artifact", "error", "Dockerfile") in rules(entry(files, name="local"))
    hub = {**files, "Dockerfile": GOOD_DOCKERFILE.replace("WEIGHTS=local", "WEIGHTS=hub")}
    assert rules(entry(hub, name="hub")) == {("secret-placeholder", "info", "README.md")}


def test_dockerfile_is_the_first_breadth_first_in_sorted_order(entry: Entry) -> None:
    files: Files = {
        "b/Dockerfile": "FROM a\n",
        "a/z/Dockerfile": "FROM a\n",
        "c/Dockerfile": "FROM a\n",
        "a/Dockerfile.dev": "FROM a\n",
    }
    assert entry(files, name="one").dockerfile == "b/Dockerfile"
    named = {**files, "entry.yaml": "dockerfile: a/z/Dockerfile\n"}
    assert entry(named, name="two").dockerfile == "a/z/Dockerfile"


def _zip_with(path: Path, name: str, data: bytes = b"x", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Dockerfile", GOOD_DOCKERFILE)
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("member", "data", "mode"),
    [
        ("/etc/cron.d/evil", b"x", None),
        ("../../escape.txt", b"x", None),
        ("link", b"../../../etc/passwd", stat.S_IFLNK | 0o777),
        ("abs-link", b"/etc/passwd", stat.S_IFLNK | 0o777),
    ],
    ids=["absolute", "dotdot", "symlink-out", "symlink-absolute"],
)
def test_unsafe_zip_members_are_malformed_and_nothing_is_written(
    tmp_path: Path, member: str, data: bytes, mode: int | None
) -> None:
    report = check_entry(_zip_with(tmp_path / "bad.zip", member, data, mode))
    assert rules(report) == {("malformed-entry", "error", member)}
    assert not (tmp_path / "escape.txt").exists()
    assert report.dockerfile is None


def test_zip_over_the_size_limit_and_unreadable_zip(tmp_path: Path) -> None:
    big = write_zip(tmp_path / "big.zip", {**GOOD_FILES, "data.bin": b"\0" * 100_000})
    report = check_entry(big, limits=Limits(max_archive_bytes=50_000))
    assert rules(report) == {("malformed-entry", "error", "big.zip")}
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    assert rules(check_entry(garbage)) == {("malformed-entry", "error", "garbage.zip")}


def test_symlink_out_of_a_folder_entry(entry: Entry, tmp_path: Path) -> None:
    root = write_files(tmp_path / "entries" / "e", GOOD_FILES)
    os.symlink("/etc/passwd", root / "passwd")
    os.symlink("server/main.py", root / "main.py")  # inside the tree: fine
    assert ("malformed-entry", "error", "passwd") in rules(check_entry(root))
    assert ("malformed-entry", "error", "main.py") not in rules(check_entry(root))


def test_internal_error_stays_on_its_entry_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.checks._check as check_module
    from harness.checks._rules import text_findings as original

    def explode(path: str, text: str) -> list[Finding]:
        if "boom" in text:
            raise RuntimeError("rule crashed")
        return original(path, text)

    monkeypatch.setattr(check_module, "text_findings", explode)
    write_files(tmp_path / "a-bad", {**GOOD_FILES, "x.py": "boom\n"})
    write_files(tmp_path / "b-good", GOOD_FILES)
    reports = check_entries(tmp_path, workers=1)
    assert [r.entry for r in reports] == ["a-bad", "b-good"]
    assert ("internal-error", "error", ".") in rules(reports[0])
    assert reports[1].status == "ok"


def test_discovery_takes_folders_and_zips_and_rejects_bad_usage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        check_entries(tmp_path / "missing")
    with pytest.raises(ConfigError):
        check_entries(tmp_path)  # empty
    write_files(tmp_path / "folder-entry", GOOD_FILES)
    write_zip(tmp_path / "zip-entry.zip", GOOD_FILES)
    (tmp_path / "notes.txt").write_text("not an entry")
    names = [r.entry for r in check_entries(tmp_path, workers=2)]
    assert names == ["folder-entry", "zip-entry.zip"]


def test_many_findings_of_one_rule_in_one_file_are_capped(entry: Entry) -> None:
    code = "".join(f'P{i} = "/home/alice/f{i}.txt"\n' for i in range(50))
    report = entry({**GOOD_FILES, "paths.py": code})
    local = [f for f in report.findings if f.rule == "local-path"]
    assert len(local) == 21
    assert local[-1].message == "... and 30 more in this file"


def test_large_text_files_are_reported_as_skipped(tmp_path: Path) -> None:
    root = write_files(tmp_path / "e", {**GOOD_FILES, "data.jsonl": "{}\n" * 1000})
    report = check_entry(root, limits=Limits(max_text_bytes=1000))
    assert ("skipped-file", "info", "data.jsonl") in rules(report)


def test_zip_with_a_wrapping_folder_keeps_paths_relative_to_the_zip(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for rel, content in GOOD_FILES.items():
            zf.writestr(f"team/{rel}", content)
    (tmp_path / "team.zip").write_bytes(buffer.getvalue())
    report = check_entry(tmp_path / "team.zip")
    assert report.dockerfile == "team/Dockerfile"
    assert report.status == "ok"


def test_extracted_files_are_readable_by_a_container_user_whatever_the_umask(
    tmp_path: Path,
) -> None:
    from harness.checks import extract_zip

    archive = tmp_path / "entry.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, mode in [("model/weights.bin", 0o600), ("start.sh", 0o700)]:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            zf.writestr(info, b"x")
    previous = os.umask(0o077)
    try:
        assert extract_zip(archive, tmp_path / "out", Limits(), [])
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*.*")}
    assert modes == {"weights.bin": 0o644, "start.sh": 0o755}


def test_weights_without_their_training_record_are_a_warning(entry: Entry) -> None:
    weights = {"model/model.safetensors": b"\0weights"}
    report = entry({**GOOD_FILES, **weights}, name="no-record")
    assert report.status == "ok"
    [finding] = [f for f in report.findings if f.rule == "no-training-record"]
    assert (finding.severity, finding.path) == ("warning", "training/metrics.jsonl")
    assert "model/model.safetensors" in finding.message and "run_record.json" in finding.message

    half = {"training/metrics.jsonl": '{"step": 1, "loss": 2.0}\n'}
    report = entry({**GOOD_FILES, **weights, **half}, name="half-record")
    [finding] = [f for f in report.findings if f.rule == "no-training-record"]
    assert finding.path == "training/run_record.json"

    record = {**half, "training/run_record.json": '{"seed": 7}\n'}
    full = entry({**GOOD_FILES, **weights, **record}, name="full")
    # No weights shipped (fetched at build time, or not trained yet): nothing to record.
    hub = entry(GOOD_FILES, name="hub")
    assert all(f.rule != "no-training-record" for f in [*full.findings, *hub.findings])
    # Weights locked by URL are shipped weights too.
    lock = '{"files": [{"path": "model.safetensors", "size": 8, "sha256": "' + "a" * 64 + '"}]}'
    report = entry({**GOOD_FILES, "weights.lock.json": lock}, name="locked")
    [finding] = [f for f in report.findings if f.rule == "no-training-record"]
    assert "weights.lock.json" in finding.message
    empty = entry({**GOOD_FILES, "weights.lock.json": '{"files": []}'}, name="unlocked")
    assert all(f.rule != "no-training-record" for f in empty.findings)
