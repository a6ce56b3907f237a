"""`harness competition release` on a service's data folder, and a real `harness serve` serving
it at /releases/VERSION: read-only, only the files the manifest lists, a changed file refused
by name while the rest is served."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app
from harness.leaderboard.html import entry_page
from harness.leaderboard.release import MANIFEST
from tests.harness.service.conftest import Serve
from tests.harness.service.test_leaderboard import _published_field


def test_a_release_of_the_service_is_served_read_only_and_a_changed_file_refused(
    tmp_path: Path, serve: Serve
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _, row_ids, _ = _published_field(
        data, [("strong", "strong"), ("twin-a", "twin-a"), ("twin-b", "twin-b")]
    )
    result = CliRunner().invoke(app, ["competition", "release", "v1", "--data", str(data)])
    assert result.exit_code == 0, result.output
    folder = data / "releases" / "v1"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert f"in {folder}" in result.output
    entries = manifest["tracks"]["4090"]["entries"]
    # Rows show teams; the manifest ties each to its submission in the results store.
    assert {e["name"]: e["entry"] for e in entries} == row_ids
    assert [e["rank"] for e in entries] == [1, 2, 2]  # the twins score the same
    assert manifest["tracks"]["A100"]["entries"] == []
    again = CliRunner().invoke(app, ["competition", "release", "v1", "--data", str(data)])
    assert again.exit_code == 2 and "never written twice" in again.output
    nothing = CliRunner().invoke(app, ["competition", "release", "v1", "--data", str(tmp_path)])
    assert nothing.exit_code == 2 and "service.sqlite" in nothing.output

    served = serve(data=data)
    with served.client() as client:
        root = client.get("/releases/v1")
        assert (root.status_code, root.headers["location"]) == (308, "/releases/v1/")
        index = client.get("/releases/v1/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert 'href="4090/leaderboard.html"' in index.text
        board = client.get("/releases/v1/4090/leaderboard.html")
        assert board.status_code == 200 and "twin-a" in board.text
        assert client.get("/releases/v1/4090/leaderboard.md").text.startswith("# Leaderboard")
        page = client.get(f"/releases/v1/4090/{entry_page('strong')}")
        assert page.status_code == 200 and "<h1>strong</h1>" in page.text
        assert client.get(f"/releases/v1/{MANIFEST}").json()["version"] == "v1"

        for missing in (
            "/releases/v2/",  # no such version
            "/releases/v1/4090/results.sqlite",  # not in the manifest
            "/releases/v1/%2e%2e/service.sqlite",  # out of the release
            "/releases/v1/..%2f..%2fservice.sqlite",
            "/releases/.hidden/",
        ):
            assert client.get(missing).status_code == 404, missing
        assert client.post("/releases/v1/index.html").status_code == 405  # read-only

        (folder / "4090" / "extra.html").write_text("<p>not released</p>")
        assert client.get("/releases/v1/4090/extra.html").status_code == 404
        markdown = folder / "4090" / "leaderboard.md"
        markdown.write_text(markdown.read_text().replace("twin-a", "twin-z"))
        refused = client.get("/releases/v1/4090/leaderboard.md")
        assert refused.status_code == 409
        assert "4090/leaderboard.md differs from the release's manifest" in refused.text
        assert "twin-z" not in refused.text
        assert client.get("/releases/v1/4090/leaderboard.html").status_code == 200
