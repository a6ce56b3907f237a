"""`harness submission new`: a complete, self-contained, pinned submission folder."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.checks import check_entry
from harness.cli import app
from harness.competition import TRACK_NAMES
from harness.errors import ConfigError
from harness.submission.render import TEMPLATES, lock_weights, render_submission
from harness.submission.tiny_model import write_tiny_dataset

runner = CliRunner()


@pytest.fixture(params=TRACK_NAMES)
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return render_submission(request.param, "entry-1", tmp_path / "entry-1").path


def _dockerfile_copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_renders_every_file_a_submission_needs(rendered: Path) -> None:
    for name in (
        "Dockerfile",
        "Dockerfile.train",
        ".dockerignore",
        ".gitignore",
        "README.md",
        "requirements.txt",
        "requirements-train.txt",
        "config.yaml",
        "main.py",
        "engine.py",
        "prefix_cache.py",
        "settings.py",
        "api.py",
        "train.py",
        "merge.py",
        "fetch_weights.py",
        "model/README.md",
        "data/README.md",
    ):
        assert (rendered / name).is_file(), name
    assert not list(rendered.rglob("*.j2"))


def test_scripts_are_copied_verbatim_and_never_import_the_harness(rendered: Path) -> None:
    sources = [
        source for folder in ("server", "train") for source in (TEMPLATES / folder).glob("*.py")
    ]
    assert len(sources) >= 8, sources  # a move of the templates must not empty this loop
    for source in sources:
        copy = rendered / source.name
        assert copy.read_bytes() == source.read_bytes()
        assert not re.search(r"^\s*(from|import) harness", copy.read_text(), re.MULTILINE)


def test_every_copy_source_is_in_the_build_context(rendered: Path) -> None:
    ignored = set((rendered / ".dockerignore").read_text().split())
    for dockerfile in ("Dockerfile", "Dockerfile.train"):
        sources = _dockerfile_copy_sources((rendered / dockerfile).read_text())
        assert sources, f"no COPY parsed from {dockerfile}"
        for source in sources:
            assert (rendered / source).exists(), f"{dockerfile}: COPY {source}"
            assert not {source, source.rstrip("/"), f"/{source.rstrip('/')}"} & ignored, source


def test_the_serve_image_copies_every_server_module(rendered: Path) -> None:
    # The server's modules import each other by name: one missing from the image fails only when
    # the container starts.
    copied = set(_dockerfile_copy_sources((rendered / "Dockerfile").read_text()))
    modules = {path.name for path in (TEMPLATES / "server").glob("*.py")}
    assert len(modules) >= 5, modules
    assert modules <= copied, sorted(modules - copied)


def test_base_image_is_pinned_by_digest_and_packages_by_hash(rendered: Path) -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.train"):
        text = (rendered / dockerfile).read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs and all("--require-hashes" in line for line in installs)
    for requirements in ("requirements.txt", "requirements-train.txt"):
        text = (rendered / requirements).read_text()
        assert "--hash=sha256:" in text and ">=" not in text


def test_both_images_share_one_base_stage(rendered: Path) -> None:
    def base_stage(dockerfile: str) -> str:
        text = (rendered / dockerfile).read_text()
        return text[text.index("FROM ${BASE_IMAGE} AS base") :].split("\n\n")[0]

    assert base_stage("Dockerfile") == base_stage("Dockerfile.train")


def test_no_token_is_baked_into_an_image(rendered: Path) -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.train"):
        for line in (rendered / dockerfile).read_text().splitlines():
            if line.startswith(("ENV ", "ARG ")):
                assert not re.search(r"token|secret|key", line, re.IGNORECASE), line
    assert "--mount=type=secret,id=hf_token" in (rendered / "Dockerfile").read_text()


def test_serve_image_runs_as_a_user_with_a_healthcheck_on_port_80(rendered: Path) -> None:
    text = (rendered / "Dockerfile").read_text()
    assert "USER app" in text and "EXPOSE 80" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "80"]' in text


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "e").path
    (out / "model" / "weights.txt").write_text("keep me")
    (out / "Dockerfile").write_text("edited")
    with pytest.raises(ConfigError, match="--force"):
        render_submission("4090", "entry-1", out)
    render_submission("4090", "entry-1", out, force=True)
    assert (out / "model" / "weights.txt").read_text() == "keep me"
    assert (out / "Dockerfile").read_text() != "edited"


def test_force_keeps_an_edited_config_and_the_weights_default_unless_asked(
    tmp_path: Path,
) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "e").path
    preset = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(preset.replace("learning_rate: 0.0002", "learning_rate: 1e-5"))
    dockerfile = (out / "Dockerfile").read_text()
    (out / "Dockerfile").write_text(dockerfile.replace("ARG WEIGHTS=hub", "ARG WEIGHTS=url"))
    result = runner.invoke(app, ["submission", "new", "--track", "4090", "--name", "entry-1",
                                 "--out", str(out), "--force"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "learning_rate: 1e-5" in (out / "config.yaml").read_text()
    assert "ARG WEIGHTS=url" in (out / "Dockerfile").read_text()
    render_submission("4090", "entry-1", out, force=True, reset_config=True)
    assert (out / "config.yaml").read_text() == preset


def test_model_dir_is_copied_and_served_by_default(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = render_submission("A100", "tiny", tmp_path / "t", model_dir=tiny_model_dir).path
    assert (out / "model" / "config.json").read_bytes() == (
        tiny_model_dir / "config.json"
    ).read_bytes()
    assert "ARG WEIGHTS=local" in (out / "Dockerfile").read_text()
    with pytest.raises(ConfigError, match=r"config\.json"):
        render_submission("A100", "tiny", tmp_path / "u", model_dir=tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--track", "H100"], "unknown track"),
        (["--track", "4090", "--name", "Bad Name"], "must be lowercase"),
    ],
)
def test_cli_rejects_bad_input_with_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["submission", "new", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_writes_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "sub"
    result = runner.invoke(app, ["submission", "new", "--track", "4090", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "Dockerfile").is_file()


def test_rendered_submissions_have_no_findings_at_all(tmp_path: Path, tiny_model_dir: Path) -> None:
    from harness.checks import check_entries

    render_submission("4090", "plain", tmp_path / "entries" / "plain")
    render_submission("A100", "served", tmp_path / "entries" / "served", model_dir=tiny_model_dir)
    reports = check_entries(tmp_path / "entries")
    # A model served without the record of its training (none beside it) is worth a warning.
    assert [(r.entry, r.dockerfile, [f.rule for f in r.findings]) for r in reports] == [
        ("plain", "Dockerfile", []),
        ("served", "Dockerfile", ["no-training-record"]),
    ]


def test_weights_command_makes_the_merged_model_the_default(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "e").path
    assert "ARG WEIGHTS=hub" in (out / "Dockerfile").read_text()
    # As train.py and merge.py leave them: out/train holds the record, out/merged the model.
    merged = shutil.copytree(tiny_model_dir, tmp_path / "out" / "merged")
    (tmp_path / "out" / "train").mkdir()
    for name in ("metrics.jsonl", "run_record.json", "data_report.json"):
        (tmp_path / "out" / "train" / name).write_text(f"{name}\n")
    result = runner.invoke(app, ["submission", "weights", str(out), str(merged)])
    assert result.exit_code == 0, result.output
    assert "ARG WEIGHTS=local" in (out / "Dockerfile").read_text()
    assert (out / "model" / "model.safetensors").is_file()
    shipped = sorted(p.name for p in (out / "training").iterdir())
    assert shipped == ["metrics.jsonl", "run_record.json"]
    assert (out / "training" / "run_record.json").read_text() == "run_record.json\n"
    result = runner.invoke(app, ["submission", "weights", str(tmp_path), str(tiny_model_dir)])
    assert result.exit_code == 2 and "is not a rendered inference Dockerfile" in result.output


def test_weights_by_url_are_locked_by_size_and_sha256(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "e").path
    assert json.loads((out / "weights.lock.json").read_text()) == {"files": []}
    base = "https://example.org/me/model/resolve/" + "a" * 40
    result = runner.invoke(
        app, ["submission", "weights", str(out), str(tiny_model_dir), "--url-base", base + "/"]
    )
    assert result.exit_code == 0, result.output
    assert "ARG WEIGHTS=url" in (out / "Dockerfile").read_text()
    files = json.loads((out / "weights.lock.json").read_text())["files"]
    weights = next(f for f in files if f["path"] == "model.safetensors")
    data = (tiny_model_dir / "model.safetensors").read_bytes()
    assert weights == {
        "path": "model.safetensors",
        "url": base + "/model.safetensors",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert {f["path"] for f in files} == {p.name for p in tiny_model_dir.iterdir() if p.is_file()}
    assert not (out / "model" / "model.safetensors").exists()  # nothing copied
    # A re-render keeps the lock; plain HTTP off this machine and a non-model folder are refused.
    render_submission("4090", "entry-1", out, force=True)
    assert json.loads((out / "weights.lock.json").read_text())["files"] == files
    for args, message in (
        ([str(tiny_model_dir), "--url-base", "http://example.org/m"], "must be an https:// URL"),
        ([str(tmp_path), "--url-base", base], "no config.json"),
    ):
        result = runner.invoke(app, ["submission", "weights", str(out), *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_git_keeps_training_outputs_and_weights_out(tmp_path: Path) -> None:
    folder = render_submission("4090", "entry-1", tmp_path / "entry-1").path
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "out" / "train").mkdir(parents=True)
    (folder / "out" / "train" / "adapter.safetensors").write_bytes(b"w")
    (folder / "model" / "model.safetensors").write_bytes(b"w")
    listed = subprocess.run(
        ["git", "-C", str(folder), "ls-files", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "model/README.md" in listed and "Dockerfile" in listed
    assert not [name for name in listed if name.startswith("out/") or name.endswith(".safetensors")]


def test_smoke_writes_a_dry_run_config_that_trains_and_merges_apart_from_the_real_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "e").path
    write_tiny_dataset(out / "data" / "train.jsonl")
    result = runner.invoke(app, ["submission", "smoke", str(out), "--base-model",
                                 str(tiny_model_dir), "--dataset", "data/train.jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for script in ("train.py", "merge.py"):
        done = subprocess.run(
            [sys.executable, script, "--config", "smoke.yaml"],
            cwd=out, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "out" / "smoke" / "merged" / "config.json").is_file()
    assert not (out / "out" / "train").exists()  # the real run's folder is untouched
    result = runner.invoke(app, ["submission", "smoke", str(tmp_path), "--base-model", "x",
                                 "--dataset", "d.jsonl"])  # fmt: skip
    assert result.exit_code == 2 and "not a rendered submission" in result.output


def test_check_flags_served_weights_that_are_not_pinned(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = render_submission("4090", "entry-1", tmp_path / "entry-1").path
    dockerfile = (out / "Dockerfile").read_text()

    def weights_findings() -> list[str]:
        report = check_entry(out)
        return [f.message for f in report.findings if f.rule == "unpinned-weights"]

    assert weights_findings() == []
    (out / "Dockerfile").write_text(
        re.sub(r"^ARG MODEL_REVISION=\S+", "ARG MODEL_REVISION=main", dockerfile, flags=re.M)
    )
    (message,) = weights_findings()
    assert "MODEL_REVISION 'main'" in message and "commit sha" in message
    (out / "Dockerfile").write_text(dockerfile.replace("ARG WEIGHTS=hub", "ARG WEIGHTS=url"))
    (message,) = weights_findings()  # the rendered lock lists no file yet
    assert "weights.lock.json" in message and "--url-base" in message
    lock_weights(out, tiny_model_dir, "https://example.org/me/model")
    assert weights_findings() == []
