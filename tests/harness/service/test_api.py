"""The service's API and pages against a real `harness serve` process: auth, isolation, uploads,
static checks at upload, quotas (also under concurrency), CSRF and cookies.

These run with `--jobs 0` (submissions are accepted and queued, none is evaluated), so they need
no Docker engine; evaluation is in test_service_docker.py.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import io
import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from tests.harness.run.test_driver import TOKEN as LEAKED
from tests.harness.service.conftest import HARNESS, Serve, quota_zone, stand_in_zip, zip_folder

QUEUED = {"status": "queued"}


def _zip(members: dict[str, bytes | str], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20  # a symlink
            archive.writestr(info, target)
    return buffer.getvalue()


def test_no_wrong_or_revoked_token_is_a_401(serve: Serve, tmp_path: Path) -> None:
    served = serve()
    token = served.add_team("team-a")
    entry = stand_in_zip(tmp_path, "a")
    for bad in (None, "hst_wrong", token[:-1]):
        with served.client(bad) as client:
            for method, path in [
                ("GET", "/api/v1/submissions"),
                ("GET", "/api/v1/submissions/sub-000000000000"),
                ("POST", "/api/v1/submissions/sub-000000000000/cancel"),
            ]:
                response = client.request(method, path)
                assert response.status_code == 401, (bad, path)
                assert response.headers["www-authenticate"] == "Bearer"
        assert served.submit(bad or "", entry).status_code == 401
    assert served.submit(token, entry).status_code == 201

    revoked = subprocess.run(
        [str(HARNESS), "teams", "revoke", "team-a", "--data", str(served.data)],
        capture_output=True,
        text=True,
    )
    assert revoked.returncode == 0, revoked.stderr
    with served.client(token) as client:
        assert client.get("/api/v1/submissions").status_code == 401


def test_a_team_sees_and_changes_only_its_own_submissions(serve: Serve, tmp_path: Path) -> None:
    served = serve()
    alice, bob = served.add_team("alice"), served.add_team("bob")
    created = served.submit(alice, stand_in_zip(tmp_path, "a"), visibility="published")
    assert created.status_code == 201, created.text
    sub_id = created.json()["id"]
    with served.client(bob) as client:
        for method, path in [
            ("GET", f"/api/v1/submissions/{sub_id}"),
            ("GET", f"/api/v1/submissions/{sub_id}/logs"),
            ("POST", f"/api/v1/submissions/{sub_id}/publish"),
            ("POST", f"/api/v1/submissions/{sub_id}/cancel"),
        ]:
            assert client.request(method, path).status_code == 404, path
        assert client.get("/api/v1/submissions").json() == []
    with served.client(alice) as client:
        mine = client.get(f"/api/v1/submissions/{sub_id}").json()
        assert mine["status"] == "queued" and mine["position"] == 1
        assert client.post(f"/api/v1/submissions/{sub_id}/cancel").json()["status"] == "cancelled"
    # The zip is never served to anyone: no route exposes uploads.
    assert httpx.get(f"{served.url}/uploads/{sub_id}.zip").status_code == 404


def test_a_submission_answers_with_its_place_and_an_eta(serve: Serve, tmp_path: Path) -> None:
    served = serve("--jobs", "0", "--quota", "5")
    token = served.add_team("team-a")
    answers = [served.submit(token, stand_in_zip(tmp_path, f"e{i}")).json() for i in range(3)]
    assert [a["position"] for a in answers] == [1, 2, 3]
    assert all(a["status"] == "queued" and a["eta_seconds"] > 0 for a in answers)
    assert answers[2]["eta_seconds"] > answers[0]["eta_seconds"]
    with served.client(token) as client:
        client.post(f"/api/v1/submissions/{answers[0]['id']}/cancel")
        after = client.get(f"/api/v1/submissions/{answers[2]['id']}").json()
    assert after["position"] == 2


def test_uploads_over_the_limit_are_refused_without_being_kept(
    serve: Serve, tmp_path: Path
) -> None:
    served = serve("--jobs", "0", "--max-upload-mb", "0.1")
    token = served.add_team("team-a")
    big = _zip({"Dockerfile": "FROM x\n", "weights.bin": bytes(range(256)) * 1024})
    assert len(big) > 0.1 * 1024**2
    response = served.submit(token, big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    # No Content-Length (a chunked stream): counted as it arrives and cut at the limit.
    def chunks() -> Iterator[bytes]:
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="track"\r\n\r\n4090\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="e.zip"\r\n\r\n'
        for _ in range(64):
            yield b"\0" * 4096

    with served.client(token) as client:
        chunked = client.post(
            "/api/v1/submissions",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    assert chunked.status_code == 413
    assert list((served.data / "uploads").iterdir()) == []
    assert served.submit(token, stand_in_zip(tmp_path, "small")).status_code == 201


def test_hostile_and_non_zip_uploads_are_422_with_the_reason(serve: Serve, tmp_path: Path) -> None:
    served = serve()
    token = served.add_team("team-a")
    not_zip = served.submit(token, b"PK? no, just some text")
    assert not_zip.status_code == 422
    assert "not a zip archive" in not_zip.json()["detail"]
    hostile = {
        "dot-dot": _zip({"Dockerfile": "FROM x\n", "../escape.txt": "out"}),
        "absolute": _zip({"Dockerfile": "FROM x\n", "/etc/evil": "out"}),
        "symlink": _zip({"Dockerfile": "FROM x\n"}, links={"passwd": "../../../etc/passwd"}),
    }
    for name, body in hostile.items():
        response = served.submit(token, body)
        assert response.status_code == 422, name
        detail = response.json()["detail"]
        assert detail["status"] == "flagged"
        assert [f["rule"] for f in detail["findings"]] == ["malformed-entry"], name
    # A zip bomb: 2 GiB of zeros in a few MiB (the checks read declared sizes, not the data).
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Dockerfile", "FROM x\n")
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            block = bytes(16 * 1024**2)
            for _ in range(129):
                member.write(block)
    response = served.submit(token, bomb.read_bytes())
    assert response.status_code == 422
    assert "over the" in response.json()["detail"]["findings"][0]["message"]
    assert not (tmp_path / "escape.txt").exists() and not (served.data / "escape.txt").exists()
    with served.client(token) as client:
        states = {s["status"] for s in client.get("/api/v1/submissions").json()}
    assert states == {"flagged"}


def test_a_leaked_token_is_answered_at_once_redacted_and_never_queued(
    serve: Serve, tmp_path: Path
) -> None:
    served = serve()
    token = served.add_team("team-a")
    entry = tmp_path / "entries"
    stand_in_zip(tmp_path, "leaky")
    (entry / "leaky" / "login.py").write_text(f'HF_TOKEN = "{LEAKED}"\n')
    response = served.submit(token, zip_folder(entry / "leaky"))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["status"] == "flagged" and "leaked-secret" in detail["message"]
    assert any(f["rule"] == "leaked-secret" and "hf_…" in f["message"] for f in detail["findings"])
    assert LEAKED not in response.text
    with served.client(token) as client:
        shown = client.get(f"/api/v1/submissions/{detail['id']}").json()
    assert shown["status"] == "flagged" and shown["position"] is None
    assert not (served.data / "uploads" / f"{detail['id']}.zip").exists()
    kept = b"".join(p.read_bytes() for p in served.data.rglob("*") if p.is_file())
    assert LEAKED.encode() not in kept and token.encode() not in kept
    # A flagged entry takes no quota slot (it never reaches a GPU).
    for i in range(3):
        assert served.submit(token, stand_in_zip(tmp_path, f"ok{i}")).status_code == 201


def test_the_daily_quota_holds_under_concurrency(serve: Serve, tmp_path: Path) -> None:
    served = serve("--jobs", "0", "--quota", "3")
    token, other = served.add_team("team-a"), served.add_team("team-b")
    body = stand_in_zip(tmp_path, "e")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: served.submit(token, body).status_code, range(10)))
    assert sorted(codes) == [201] * 3 + [429] * 7

    refused = served.submit(token, body)
    assert refused.status_code == 429
    # The slot frees at the next midnight of the quota's time zone (the fixture's: noon there).
    zone = ZoneInfo(quota_zone())
    tomorrow = datetime.datetime.now(zone).date() + datetime.timedelta(days=1)
    next_slot = datetime.datetime.fromisoformat(refused.json()["detail"]["next_slot_at"])
    assert next_slot.astimezone(zone) == datetime.datetime.combine(tomorrow, datetime.time(), zone)
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    with served.client(token) as client:
        assert client.get("/api/v1/competition").json()["quota_timezone"] == zone.key
    # Per track and per team.
    assert served.submit(token, body, track="A100").status_code == 201
    assert served.submit(other, body).status_code == 201
    # A cancel before the start gives the slot back.
    with served.client(token) as client:
        queued = [s for s in client.get("/api/v1/submissions").json() if s["track"] == "4090"]
        client.post(f"/api/v1/submissions/{queued[0]['id']}/cancel")
    assert served.submit(token, body).status_code == 201
    assert served.submit(token, body).status_code == 429


def test_an_unknown_quota_time_zone_stops_the_service_before_it_serves(tmp_path: Path) -> None:
    refused = subprocess.run(
        [HARNESS, "serve", "--data", tmp_path / "data", "--quota-timezone", "Mars/Olympus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "--quota-timezone: no time zone named 'Mars/Olympus'" in refused.stderr
    assert not (tmp_path / "data").exists()


def test_pages_use_csrf_and_a_strict_httponly_cookie_and_never_show_tokens(
    serve: Serve, tmp_path: Path
) -> None:
    served = serve()
    token = served.add_team("team-a")
    sub_id = served.submit(token, stand_in_zip(tmp_path, "a")).json()["id"]
    with httpx.Client(base_url=served.url, follow_redirects=False) as browser:
        form = browser.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        # A forged form (no token of this browser) is refused before the token is even looked at.
        assert browser.post("/signin", data={"token": token}).status_code == 403
        assert browser.post("/signin", data={"token": token, "csrf": "x"}).status_code == 403
        signed = browser.post("/signin", data={"token": token, "csrf": csrf.group(1)})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert token not in cookie
        page = browser.get(f"/submissions/{sub_id}")
        assert page.status_code == 200 and "queued" in page.text
        assert browser.post(f"/submissions/{sub_id}/cancel", data={}).status_code == 403
        assert (
            browser.post(f"/submissions/{sub_id}/cancel", data={"csrf": csrf.group(1)}).status_code
            == 303
        )
        pages = "".join(browser.get(p).text for p in ("/submissions", f"/submissions/{sub_id}"))
        assert token not in pages
    assert token not in served.log.read_text()


def test_the_openapi_schema_documents_the_v1_api(serve: Serve) -> None:
    schema = httpx.get(f"{serve().url}/api/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) >= {
        "/api/v1/submissions",
        "/api/v1/submissions/{sub_id}",
        "/api/v1/submissions/{sub_id}/logs",
        "/api/v1/submissions/{sub_id}/publish",
        "/api/v1/submissions/{sub_id}/cancel",
        "/api/v1/leaderboard/{track}",
    }
    upload = paths["/api/v1/submissions"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"401", "413", "422", "429"} <= set(upload["responses"])
    assert json.dumps(schema).count("HTTPBearer") >= 1


def test_teams_add_prints_the_token_once_alone_on_the_last_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = subprocess.run(
        [str(HARNESS), "teams", "add", "team-a", "--data", str(data), "--email", "a@x.org"],
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.splitlines()[-1]
    assert re.fullmatch(r"hst_[A-Za-z0-9_-]{43}", token)
    listed = subprocess.run(
        [str(HARNESS), "teams", "list", "--data", str(data)], capture_output=True, text=True
    )
    assert "team-a" in listed.stdout and token not in listed.stdout
    assert token.encode() not in (data / "service.sqlite").read_bytes()
    again = subprocess.run(
        [str(HARNESS), "teams", "add", "team-a", "--data", str(data)], capture_output=True
    )
    assert again.returncode == 2


def sign_in(browser: httpx.Client, secret: str) -> None:
    """Sign a web client in with a team's token (its session cookie is kept)."""
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
    assert csrf is not None
    browser.post("/signin", data={"token": secret, "csrf": csrf.group(1)})


def test_admins_see_the_queue_and_every_team_and_teams_do_not(serve: Serve, tmp_path: Path) -> None:
    served = serve()
    token, admin = served.add_team("team-a"), served.add_team("organizers", admin=True)
    sub_id = served.submit(token, stand_in_zip(tmp_path, "a")).json()["id"]

    with httpx.Client(base_url=served.url) as team:
        sign_in(team, token)
        assert team.get("/admin").status_code == 404
    with httpx.Client(base_url=served.url) as organizer:
        sign_in(organizer, admin)
        page = organizer.get("/admin")
        assert page.status_code == 200
        assert sub_id in page.text and "team-a" in page.text
        assert organizer.get(f"/submissions/{sub_id}").status_code == 200
        csrf = organizer.cookies["harness_csrf"]
        organizer.post(f"/submissions/{sub_id}/cancel", data={"csrf": csrf})
        organizer.post(f"/submissions/{sub_id}/rerun", data={"csrf": csrf})
    with served.client(token) as client:
        assert client.get(f"/api/v1/submissions/{sub_id}").json()["status"] == "queued"


def test_a_second_service_on_the_same_data_folder_is_refused(serve: Serve) -> None:
    served = serve()
    second = subprocess.run(
        [str(HARNESS), "serve", "--data", str(served.data), "--jobs", "0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 3
    message = " ".join(second.stderr.split())  # the console wraps long lines
    assert "in use by" in message and "harness serve" in message


def test_every_page_asset_is_served_by_the_service_itself(serve: Serve) -> None:
    served = serve()
    with httpx.Client(base_url=served.url, follow_redirects=True) as browser:
        for path in ("/", "/leaderboard/A100", "/signin"):
            page = browser.get(path)
            assert page.status_code == 200
            assets = re.findall(r'<(?:link|script|img)[^>]+(?:href|src)="([^"]+)"', page.text)
            assert assets and all(asset.startswith("/") for asset in assets), assets
            for asset in assets:
                fetched = browser.get(asset)
                assert fetched.status_code == 200, asset
                assert fetched.headers["content-type"].startswith("text/css")
        assert browser.get("/leaderboard/H100").status_code == 404
