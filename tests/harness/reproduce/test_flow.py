"""`harness reproduce` in the real Docker engine with real HELM, plus its pure parts.

A foreign entry (its own entry.yaml, a shell "training" and the stand-in server of the `harness run`
tests) covers the manifest, secrets and every verdict in seconds; a rendered submission trained for
a few QLoRA steps on the tiny model covers the real path: train, merge, build, serve, score.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.helm.confs import load_conf, write_helm_conf
from harness.infra.docker import build
from harness.reproduce.flow import compare, judge, reproduce_entry
from harness.reproduce.options import (
    REPRODUCE_LABEL,
    Manifest,
    ReproduceOptions,
    Verdict,
    load_manifest,
    parse_duration,
)
from harness.reproduce.training import hash_files
from harness.run.driver import RunOptions, run_entries
from harness.run.health import HealthSchedule
from harness.store import Metric, Status, Store, entry_slug
from harness.submission.render import render_submission, smoke_config, use_weights
from harness.submission.tiny_model import write_tiny_dataset
from tests.conftest import TEST_LABEL
from tests.harness.run.test_driver import QUICK_HEALTH, SERVER, write_conf

TOKEN = "hf_" + "Zq4Lm8TnW2xVb7RcK9pDs3FgHj6YeUiAoP"  # made up, shaped like a Hugging Face token
LABELS = dict([TEST_LABEL.split("=")])


# -- pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("90m", 5400), ("2s", 2), ("1.5h", 5400), ("30", 30)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "soon", "-1h", "0s", "nanh"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_manifest_defaults_fit_our_templates_and_entry_yaml_overrides_them(tmp_path: Path) -> None:
    assert load_manifest(tmp_path) == Manifest()
    assert Manifest().volume_path == "/app/out"
    (tmp_path / "entry.yaml").write_text(
        "dockerfile: Dockerfile\ntrain_dockerfile: train/Dockerfile\n"
        "weights_path: /work/weights/\nmodel_dir: weights\nsecrets: [HF_TOKEN, WANDB_API_KEY]\n"
    )
    manifest = load_manifest(tmp_path)
    assert manifest.train_dockerfile == "train/Dockerfile"
    assert (manifest.weights_path, manifest.volume_path) == ("/work/weights", "/work")
    assert manifest.secrets == ("HF_TOKEN", "WANDB_API_KEY")
    assert manifest.build_args == {"WEIGHTS": "local"}


@pytest.mark.parametrize(
    "text",
    [
        "train_dockerfile: ../elsewhere/Dockerfile\n",
        "weights_path: out/merged\n",
        "weights_path: /weights\n",  # the volume would go on /
        "secrets: HF_TOKEN\n",
        "model_dir: [unclosed\n",
        "- a list\n",
    ],
)
def test_bad_manifests_are_config_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "entry.yaml").write_text(text)
    with pytest.raises(ConfigError):
        load_manifest(tmp_path)


def _metrics(values: dict[str, float | None]) -> list[Metric]:
    return [Metric(spec, spec.split(":")[0], "exact_match", v) for spec, v in values.items()]


def test_comparison_judges_each_scenario_and_rescores_against_the_field() -> None:
    field = {
        "top": _metrics({"mmlu:subject=a": 0.6, "mmlu:subject=b": 0.4, "gsm": 0.30}),
        "next": _metrics({"mmlu:subject=a": 0.5, "mmlu:subject=b": 0.5, "gsm": 0.25}),
    }
    close = _metrics({"mmlu:subject=a": 0.55, "mmlu:subject=b": 0.42, "gsm": 0.31})
    comparison = compare("top", field, close)
    assert [(s.scenario, s.original, s.reproduced) for s in comparison.scenarios] == [
        ("gsm", 0.30, 0.31),
        ("mmlu", 0.5, pytest.approx(0.485)),
    ]
    verdict, reason = judge(comparison, 0.02)
    assert verdict is Verdict.REPRODUCED and "0.0150 on mmlu" in reason
    assert (comparison.original_rank, comparison.reproduced_rank) == (1, 1)
    assert comparison.field_size == 2

    worse = _metrics({"mmlu:subject=a": 0.45, "mmlu:subject=b": 0.40, "gsm": 0.20})
    comparison = compare("top", field, worse)
    verdict, reason = judge(comparison, 0.02)
    assert verdict is Verdict.DIFFERS and "0.1000 on gsm" in reason
    assert comparison.reproduced_score == 0.0 and comparison.reproduced_rank == 2

    verdict, reason = judge(compare("top", field, worse[:2]), 1.0)
    assert verdict is Verdict.DIFFERS and "gsm" in reason


# -- in Docker ------------------------------------------------------------------------------------


def _foreign_entry(entries: Path, name: str, training: str) -> Path:
    """An entry not made by our templates: its training writes /work/weights/model.bin."""
    entry = entries / name
    (entry / "train").mkdir(parents=True)
    (entry / "weights").mkdir()
    (entry / "weights" / "model.bin").write_bytes(b"submitted")
    (entry / "server.py").write_bytes(SERVER.read_bytes())
    (entry / "entry.yaml").write_text(
        "train_dockerfile: train/Dockerfile\nweights_path: /work/weights\n"
        "model_dir: weights\nsecrets: [HF_TOKEN]\n"
    )
    (entry / "train" / "Dockerfile").write_text(
        f'ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nCMD ["sh", "-c", {json.dumps(training)}]\n'
    )
    (entry / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        "COPY server.py /app/server.py\nCOPY weights/ /app/weights/\n"
        'ENV BEHAVIOUR=answer-a\nEXPOSE 80\nCMD ["python3", "/app/server.py"]\n'
    )
    return entry


def _fake_original(results: Path, name: str, conf: Path) -> None:
    """The stored traces of an original run (its HELM conf and metrics), without running it."""
    write_helm_conf(
        load_conf(conf), results / "helm" / entry_slug(name) / "open" / "run_specs.conf",
        max_eval_instances=3,
    )  # fmt: skip
    with Store(results) as store:
        store.add_entry(name, results)
        attempt = store.start_attempt(name, "open")
        store.record_metrics(attempt, [Metric("local_task", "local_task", "exact_match", 1.0)])


def _options(results: Path, base_image: str, **overrides: Any) -> ReproduceOptions:
    values: dict[str, Any] = {
        "track": "4090",
        "results": results,
        "base_image": base_image,
        "time_limit_s": 120,
        "health": QUICK_HEALTH,
        "eval_deadline_s": 300,
        "mem_limit": "2g",
        "environment": {"HF_TOKEN": TOKEN},
        "labels": LABELS,
    }
    return ReproduceOptions(**(values | overrides))


@pytest.fixture
def cleanup(docker_client: Any) -> Any:
    """Removes what the runs made under their own labels (the test label covers the rest)."""
    slugs: list[str] = []
    yield slugs
    for slug in slugs:
        for image in docker_client.images.list(filters={"label": f"org.harness.entry={slug}"}):
            docker_client.images.remove(image.id, force=True)
    reproduced = {"label": REPRODUCE_LABEL}
    assert docker_client.containers.list(all=True, filters=reproduced) == []
    assert docker_client.volumes.list(filters=reproduced) == []


def _everything(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.docker
@pytest.mark.helm
def test_a_foreign_entry_reproduces_with_its_manifest_and_secret(
    tmp_path: Path, base_image: str, helm_bin: Path, cleanup: list[str]
) -> None:
    # The "training" proves it got the token, and prints it: the logs must not keep it.
    # umask 077: weights private to the training's user, which the inference server is not.
    script = (
        'test -n "$HF_TOKEN" && echo "login with $HF_TOKEN" && umask 077 && mkdir -p '
        "/work/weights && printf trained > /work/weights/model.bin && echo done"
    )
    entry = _foreign_entry(tmp_path / "entries", "foreign", script)
    results = tmp_path / "results"
    original = RunOptions(
        track="4090", stage="open", out=results, max_eval_instances=3,
        run_specs=str(write_conf(tmp_path, 3)), base_image=base_image, health=QUICK_HEALTH,
        mem_limit="256m", max_sequence_length=256, deadline_s=300,
    )  # fmt: skip
    cleanup += [entry_slug("foreign"), entry_slug("foreign-reproduced")]
    [outcome] = run_entries(tmp_path / "entries", original)
    assert outcome.status is Status.SCORED, outcome.reason

    result = reproduce_entry(entry, _options(results, base_image))

    assert result.verdict is Verdict.REPRODUCED, (result.reason, result.log_tail)
    assert result.training is not None and result.training.finished
    assert result.training.secrets_passed == ("HF_TOKEN",)
    digest = hashlib.sha256(b"trained").hexdigest()
    assert result.weights == {"model.bin": {"sha256": digest, "bytes": 7}}
    assert result.comparison is not None
    [scenario] = result.comparison.scenarios
    assert (scenario.original, scenario.reproduced) == (1.0, 1.0)
    folder = results / "reproduce" / entry_slug("foreign")
    report = json.loads((folder / "reproduction.json").read_text())
    assert report["verdict"] == "reproduced" and report["weights"]["model.bin"]["sha256"] == digest
    assert "| local_task | 1.0000 | 1.0000 | 0.0000 |" in (folder / "reproduction.md").read_text()
    # The inference image was built on the reproduced weights, not on the submitted ones.
    copy = folder / "work" / "foreign-reproduced"
    assert (copy / "weights" / "model.bin").read_bytes() == b"trained"
    assert (copy / "weights" / "model.bin").stat().st_mode & 0o004  # `COPY` keeps the mode
    train_log = (folder / "train.log").read_text()
    assert "login with hf_" in train_log and "done" in train_log
    assert TOKEN not in _everything(results)


@pytest.mark.docker
def test_training_past_the_time_limit_is_stopped(
    tmp_path: Path, base_image: str, cleanup: list[str]
) -> None:
    entry = _foreign_entry(tmp_path / "entries", "slow", "echo epoch 1; sleep 600")
    results = tmp_path / "results"
    _fake_original(results, "slow", write_conf(tmp_path, 3))

    result = reproduce_entry(entry, _options(results, base_image, time_limit_s=2))

    assert result.verdict is Verdict.TRAIN_TIMEOUT, result.reason
    assert result.training is not None and result.training.timed_out
    assert 2 <= result.training.wall_time_s < 30
    assert "2 s limit" in result.reason and "epoch 1" in result.log_tail
    assert result.weights == {} and result.comparison is None
    report = json.loads((result.folder / "reproduction.json").read_text())
    assert report["verdict"] == "train-timeout" and report["training"]["finished"] is False


@pytest.mark.docker
def test_a_failing_training_ends_train_failed_with_its_log_tail_and_exit_1(
    tmp_path: Path, base_image: str, cleanup: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = 'echo "loading with $HF_TOKEN"; echo "CUDA error: out of memory" >&2; exit 3'
    entry = _foreign_entry(tmp_path / "entries", "broken", script)
    results = tmp_path / "results"
    _fake_original(results, "broken", write_conf(tmp_path, 3))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    command = ["reproduce", str(entry), "--track", "4090", "--results", str(results)]
    command += ["--base-image", base_image, "--time-limit", "2m"]

    cli = CliRunner().invoke(app, command)

    assert cli.exit_code == 1, cli.output
    assert "train-failed" in cli.output and "CUDA error: out of memory" in cli.output
    folder = results / "reproduce" / entry_slug("broken")
    report = json.loads((folder / "reproduction.json").read_text())
    assert report["verdict"] == "train-failed"
    assert report["reason"] == "the training container exited with status 3"
    assert "loading with hf_" in report["log_tail"]
    assert TOKEN not in _everything(results) and TOKEN not in cli.output


@pytest.mark.docker
@pytest.mark.parametrize(
    ("training", "verdict", "reason", "in_tail"),
    [
        ("echo forgot to save", Verdict.TRAIN_FAILED, "without writing its weights", "forgot"),
        ("RUN: echo compiling flash-attn; exit 1", Verdict.BUILD_FAILED, "did not build", "flash"),
    ],
)
def test_no_weights_or_no_image_end_the_reproduction(
    tmp_path: Path,
    base_image: str,
    cleanup: list[str],
    training: str,
    verdict: Verdict,
    reason: str,
    in_tail: str,
) -> None:
    entry = _foreign_entry(tmp_path / "entries", "partial", training.removeprefix("RUN: "))
    if training.startswith("RUN: "):
        dockerfile = entry / "train" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text().replace("CMD", "RUN", 1))
    results = tmp_path / "results"
    _fake_original(results, "partial", write_conf(tmp_path, 3))

    result = reproduce_entry(entry, _options(results, base_image))

    assert result.verdict is verdict and reason in result.reason, result.reason
    assert in_tail in result.log_tail and result.comparison is None


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    entry.mkdir()
    runner = CliRunner()
    common = [str(entry), "--track", "4090", "--results", str(tmp_path / "results")]
    assert runner.invoke(app, ["reproduce", *common, "--time-limit", "soon"]).exit_code == 2
    assert runner.invoke(app, ["reproduce", str(entry), "--track", "T4"]).exit_code == 2
    nothing_to_compare = runner.invoke(app, ["reproduce", *common])
    assert nothing_to_compare.exit_code == 2 and "no open run" in nothing_to_compare.output


@pytest.mark.docker
@pytest.mark.helm
def test_a_rendered_submission_reproduces_end_to_end(
    tmp_path: Path,
    tiny_model_dir: Path,
    base_image: str,
    docker_client: Any,
    helm_bin: Path,
    cleanup: list[str],
) -> None:
    entries = tmp_path / "entries"
    submission = render_submission("4090", "tiny", entries / "tiny").path
    write_tiny_dataset(submission / "data" / "train.jsonl")
    smoke_config(submission / "config.yaml", base_model="/base", dataset="data/train.jsonl")
    # The image's user (uid 1000) reads the base model.
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    for path in [base, *base.iterdir()]:
        path.chmod(0o755)

    # The competitor's own run, by hand as the README says: train, merge, serve model/.
    built = build(
        submission, tag="harness-test/tiny-repro-train:latest", log_path=tmp_path / "train.log",
        dockerfile=submission / "Dockerfile.train", build_args={"BASE_IMAGE": base_image},
        labels=LABELS, timeout=1800,
    )  # fmt: skip
    assert built.ok, built.log_path.read_text()[-3000:]
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    docker_client.containers.run(
        built.image, remove=True, labels=LABELS,
        volumes={str(base): {"bind": "/base", "mode": "ro"}, str(out): {"bind": "/app/out"}},
    )  # fmt: skip
    use_weights(submission, out / "merged")
    results = tmp_path / "results"
    cleanup += [entry_slug("tiny"), entry_slug("tiny-reproduced")]
    health = HealthSchedule(tries=1, interval_s=180, poll_s=1)
    original = RunOptions(
        track="4090", stage="open", out=results, max_eval_instances=2,
        run_specs=str(write_conf(tmp_path, 2)), base_image=base_image, health=health,
        max_sequence_length=256, deadline_s=300,
    )  # fmt: skip
    [outcome] = run_entries(entries, original)
    assert outcome.status is Status.SCORED, outcome.reason

    result = reproduce_entry(
        submission,
        _options(results, base_image, mounts={base: "/base"}, health=health, mem_limit=None),
    )

    assert result.verdict is Verdict.REPRODUCED, (result.reason, result.log_tail)
    assert result.training is not None and result.training.finished
    assert result.training.peak_memory.get("container_memory_max_usage", 0) > 0
    # Three seeded QLoRA steps on the CPU are deterministic: the very same weights come out.
    assert result.weights == hash_files(out / "merged")
    conf = (results / "reproduce" / entry_slug("tiny") / "helm").rglob("run_specs.conf")
    assert [p.read_text() for p in conf] == [
        (results / "helm" / entry_slug("tiny") / "open" / "run_specs.conf").read_text()
    ]
