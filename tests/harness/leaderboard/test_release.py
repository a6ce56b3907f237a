"""A frozen release of a real results store (the worked example of test_report.py, A
disqualified): written, verified, and every changed, removed or added file named, by the
function and by `harness competition verify`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.helm.packs import sha256_file
from harness.leaderboard import OUTPUTS, build_leaderboard
from harness.leaderboard.html import entry_page
from harness.leaderboard.release import (
    MANIFEST,
    Problem,
    Release,
    verify_release,
    write_release,
)
from harness.store import Store
from tests.conftest import HELM_BIN
from tests.harness.leaderboard.test_report import _fill

IMAGE = {entry: f"sha256:{entry.lower() * 64}" for entry in "ABC"}
PACK = "f" * 64
REASON = "weights copied from another team"
FACTS = {"base_model": "llama-2-7b", "lora_r": "16"}


def released(tmp_path: Path, version: str = "v1") -> Release:
    """The store of test_report.py with images, a pack and a reproduction recorded, released
    with A disqualified, C's fact sheet as the service fills it, and the rows shown under names
    other than their entries'."""
    results = tmp_path / "results"
    _fill(results)
    with Store(results) as store:
        for entry, image in IMAGE.items():
            store.record_resources(entry, "open", image_id=image)
        store.start_attempt("B", "closed", instances_sha256=PACK)
        board = build_leaderboard(store, disqualified={"A": REASON})
        board = replace(
            board,
            rows=[replace(r, facts=FACTS) if r.entry == "C" else r for r in board.rows],
        )
        reproduction = results / "reproduce" / "c" / "reproduction.json"
        reproduction.parent.mkdir(parents=True)
        reproduction.write_text(
            json.dumps({"entry": "C", "stage": "closed", "verdict": "within-noise", "reason": "ok"})
        )
        return write_release(
            version,
            {"4090": board},
            store,
            tmp_path / "releases" / version,
            ids={"4090": {"C": "C"}},
            helm_bin=HELM_BIN,
        )


def test_a_release_holds_the_board_and_a_manifest_of_every_file(tmp_path: Path) -> None:
    release = released(tmp_path)
    folder = tmp_path / "releases" / "v1"
    assert release.path == folder
    assert release.manifest_sha256 == sha256_file(folder / MANIFEST)
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["v1"]  # nothing half-written
    manifest = json.loads((folder / MANIFEST).read_text())
    files = manifest["files"]
    assert release.files == len(files)
    expected = {"index.html", *(f"4090/{name}" for name in OUTPUTS)}
    expected |= {f"4090/{entry_page(entry)}" for entry in "ABCD"}
    assert set(files) == expected
    for name, digest in files.items():
        assert sha256_file(folder / name) == digest
    assert manifest["version"] == "v1" and manifest["toolkit"]["harness"] == "0.1.0"
    installed = (HELM_BIN / "python").exists()
    assert manifest["helm"]["crfm-helm"] == ("0.5.16" if installed else None)

    entries = {e["name"]: e for e in manifest["tracks"]["4090"]["entries"]}
    assert [e["name"] for e in manifest["tracks"]["4090"]["entries"]] == ["C", "B", "A", "D"]
    assert entries["C"]["rank"] == 1 and entries["C"]["stages"]["open"]["image_id"] == IMAGE["C"]
    assert entries["C"]["reproduction"] == {
        "verdict": "within-noise",
        "reason": "ok",
        "stage": "closed",
    }
    assert entries["B"]["reproduction"] is None
    assert (entries["C"]["facts"], entries["B"]["facts"]) == (FACTS, {})
    assert entries["B"]["stages"]["closed"]["instances_sha256"] == PACK
    assert entries["A"]["rank"] is None and entries["A"]["disqualified"] == REASON
    assert entries["D"]["stages"]["open"] == {
        "status": "build-failed",
        "score": None,
        "image_id": None,
        "instances_sha256": None,
    }

    markdown = (folder / "4090" / "leaderboard.md").read_text()
    assert "~~A~~" in markdown and REASON in markdown
    assert "| closed/x | base_model | lora_r | Status |" in markdown
    assert "| llama-2-7b | 16 | open: scored;" in markdown
    assert "build.log" not in markdown  # no logs in a release: its links would lead nowhere
    index = (folder / "index.html").read_text()
    assert 'href="4090/leaderboard.html"' in index and "HELM" in index

    assert verify_release(folder) == []
    assert verify_release(folder, manifest_sha256=release.manifest_sha256.upper()) == []
    result = CliRunner().invoke(app, ["competition", "verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"ok: {len(files)} files as released" in result.output


def test_a_changed_a_removed_and_an_added_file_are_each_named(tmp_path: Path) -> None:
    release = released(tmp_path)
    folder = release.path
    page = f"4090/{entry_page('B')}"
    board = folder / "4090" / "leaderboard.json"
    board.write_text(board.read_text().replace('"rank": 1', '"rank": 9', 1))
    (folder / page).unlink()
    (folder / "4090" / "notes.txt").write_text("added later\n")

    assert verify_release(folder) == [
        Problem("4090/leaderboard.json", "changed"),
        Problem(page, "missing"),
        Problem("4090/notes.txt", "extra"),
    ]
    result = CliRunner().invoke(app, ["competition", "verify", str(folder)])
    assert result.exit_code == 1
    for line in ("changed: 4090/leaderboard.json", f"missing: {page}", "extra: 4090/notes.txt"):
        assert line in result.output
    assert "3 file(s) differ" in result.output

    # A manifest rewritten to match is caught by the published sha256.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["4090/leaderboard.json"] = sha256_file(board)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert Problem("4090/leaderboard.json", "changed") not in verify_release(folder)
    assert verify_release(folder, manifest_sha256=release.manifest_sha256) == [
        Problem(MANIFEST, "changed")
    ]
    (folder / MANIFEST).write_text("{not json")
    assert verify_release(folder) == [Problem(MANIFEST, "unreadable")]
    (folder / MANIFEST).unlink()
    assert verify_release(folder) == [Problem(MANIFEST, "missing")]


def test_a_version_is_written_once_and_named_safely(tmp_path: Path) -> None:
    _fill(tmp_path / "results")
    releases = tmp_path / "releases"
    with Store(tmp_path / "results") as store:
        boards = {"4090": build_leaderboard(store, intervals=False)}
        write_release("v1", boards, store, releases / "v1")
        with pytest.raises(ConfigError, match="never written twice"):
            write_release("v1", boards, store, releases / "v1")
        with pytest.raises(ConfigError, match=r"release version '\.\./v2'"):
            write_release("../v2", boards, store, releases / "../v2")
    assert [p.name for p in releases.iterdir()] == ["v1"]
    with pytest.raises(ConfigError, match="no release folder"):
        verify_release(releases / "v9")
    result = CliRunner().invoke(app, ["competition", "verify", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no release folder" in result.output
