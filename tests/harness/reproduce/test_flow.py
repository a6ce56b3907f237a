"""`harness reproduce` in the real Docker engine with real HELM, plus its pure parts.

A foreign entry (its own entry.yaml, a shell "training" and the stand-in server of the `harness run`
tests) covers the manifest, secrets and every verdict in seconds; a rendered submission trained for
a few QLoRA steps on the tiny model covers the real path: train, merge, build, serve, score.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError
from harness.helm.confs import load_conf, write_helm_conf
from harness.leaderboard.intervals import Interval
from harness.reproduce.curves import Point, compare_curves, describe, read_curve, read_seed
from harness.reproduce.flow import reproduce_entry
from harness.reproduce.options import (
    REPRODUCE_LABEL,
    Manifest,
    ReproduceOptions,
    Reproduction,
    Verdict,
    load_manifest,
    parse_duration,
    to_json,
    to_markdown,
)
from harness.reproduce.training import hash_files
from harness.reproduce.verdict import compare, judge
from harness.run.driver import RunOptions, run_entries
from harness.run.health import HealthSchedule
from harness.store import Metric, Status, Store, entry_slug
from tests._trained import readable_base, trained_submission
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
    verdict, reason, judgements = judge([comparison], 0.02)
    assert verdict is Verdict.REPRODUCED and "-0.0150 on mmlu" in reason
    assert set(judgements) == {"gsm", "mmlu", "stage score"}
    assert (comparison.original_rank, comparison.reproduced_rank) == (1, 1)
    assert comparison.field_size == 2

    worse = _metrics({"mmlu:subject=a": 0.45, "mmlu:subject=b": 0.40, "gsm": 0.20})
    comparison = compare("top", field, worse)
    verdict, reason, _ = judge([comparison], 0.02)
    assert verdict is Verdict.DIFFERS and "-0.1000 on gsm" in reason
    assert comparison.reproduced_score == 0.0 and comparison.reproduced_rank == 2
    # The same single run against a noisy evaluation (s.e. 0.06 on gsm, 0.2 on the stage score
    # is not measured): inside the 95% interval of gsm, but the stage score still fell.
    noisy = {"gsm": Interval(0.3, 0.06, 0.18, 0.42), "mmlu": Interval(0.5, 0.06, 0.38, 0.62)}
    verdict, _, judgements = judge([comparison], 0.02, noisy)
    assert judgements["gsm"].verdict == "within-noise" and verdict is Verdict.DIFFERS

    verdict, reason, _ = judge([compare("top", field, worse[:2])], 1.0)
    assert verdict is Verdict.DIFFERS and "gsm" in reason


def test_repeated_runs_are_judged_by_their_mean_and_p_value() -> None:
    field = {"top": _metrics({"gsm": 0.30}), "next": _metrics({"gsm": 0.10})}
    runs = [compare("top", field, _metrics({"gsm": v})) for v in (0.22, 0.21, 0.23)]
    verdict, reason, judgements = judge(runs, 0.02)
    assert verdict is Verdict.DIFFERS
    assert judgements["gsm"].p_value is not None and judgements["gsm"].p_value < 0.01
    assert "3 runs' mean 0.2200" in reason and "p = " in reason
    runs = [compare("top", field, _metrics({"gsm": v})) for v in (0.35, 0.12, 0.31)]
    verdict, _, judgements = judge(runs, 0.02)
    p_value = judgements["gsm"].p_value
    assert verdict is Verdict.WITHIN_NOISE and p_value is not None and p_value > 0.05


def test_loss_curves_part_at_the_first_step_beyond_the_tolerance(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-3} for s in range(1, 9)]
    original = tmp_path / "metrics.jsonl"
    original.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curve = read_curve(original)
    same = compare_curves(curve, curve, 0.01)
    assert same.matches and same.steps == 8 and same.largest_relative_difference == 0.0
    nudged = tuple(Point(p.step, p.loss * 1.005) for p in curve)  # within 1%
    assert compare_curves(curve, nudged, 0.01).matches
    altered = tuple(Point(p.step, p.loss * (1.5 if p.step >= 5 else 1.0)) for p in curve)
    parted = compare_curves(curve, altered, 0.01)
    assert (parted.parted_at, parted.original_loss) == (5, 0.4)
    assert parted.replayed_loss == pytest.approx(0.6)
    assert "part at step 5" in describe(parted) and not parted.matches
    short = compare_curves(curve, curve[:3], 0.01)
    assert short.missing_steps == (4, 5, 6, 7, 8) and not short.matches
    assert "stopped before step 4" in describe(short)
    assert not compare_curves(curve, (), 0.01).matches
    blown_up = (*curve[:2], Point(3, math.nan), *curve[3:])
    assert compare_curves(curve, blown_up, 0.01).parted_at == 3
    assert compare_curves(blown_up, blown_up, 0.01).matches

    original.write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ConfigError, match=r"metrics\.jsonl:2"):
        read_curve(original)
    (tmp_path / "run_record.json").write_text('{"environment": {}}')
    with pytest.raises(ConfigError, match="no seed"):
        read_seed(tmp_path / "run_record.json")


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
    base = readable_base(tiny_model_dir, tmp_path)
    # The competitor's own run, by hand as the README says: train, merge, serve model/.
    submission = trained_submission(entries / "tiny", base, base_image, docker_client, tmp_path)
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

    # `harness submission weights` shipped train.py's record beside the model.
    logged = json.loads((submission / "training" / "run_record.json").read_text())
    assert logged["seed_source"] == "os"

    result = reproduce_entry(
        submission,
        _options(
            results, base_image, mounts={base: "/base"}, health=health, mem_limit=None,
            replay=True,
        ),
    )  # fmt: skip

    assert result.verdict is Verdict.REPRODUCED, (result.reason, result.log_tail)
    assert result.training is not None and result.training.finished
    assert result.training.peak_memory.get("container_memory_max_usage", 0) > 0
    # A QLoRA replay on the CPU with the logged seed is bit-identical: the same weights, the
    # same loss at every step.
    assert result.seeds == (logged["seed"],)
    merged = tmp_path / "tiny-out" / "merged"  # trained_submission's own merge
    assert result.weights == hash_files(merged) and result.weights_identical is True
    assert result.curve is not None and result.curve.matches
    assert result.curve.largest_relative_difference == 0.0
    conf = (results / "reproduce" / entry_slug("tiny") / "helm").rglob("run_specs.conf")
    assert [p.read_text() for p in conf] == [
        (results / "helm" / entry_slug("tiny") / "open" / "run_specs.conf").read_text()
    ]


# A training that logs like train.py: its losses and weights follow the seed it is given.
RECORDING_TRAINING = r"""
import json, os
seed = int(os.environ.get("TRAIN_SEED", "7"))
os.makedirs("/work/weights", exist_ok=True)
os.makedirs("/work/record", exist_ok=True)
open("/work/weights/model.bin", "w").write(f"trained with {seed}")
with open("/work/record/metrics.jsonl", "w") as log:
    for step in range(1, 9):
        log.write(json.dumps({"step": step, "loss": 2.0 / step + seed % 97 / 1000}) + "\n")
record = {"seed": seed, "deterministic": os.environ.get("TRAIN_DETERMINISTIC") == "1"}
open("/work/record/run_record.json", "w").write(json.dumps(record))
print("trained with seed", seed)
"""


def _recording_entry(entries: Path, seed: int) -> Path:
    """A foreign entry that shipped its record: trained with `seed`, its weights and losses."""
    entry = _foreign_entry(entries, "recorded", "python3 /train.py")
    (entry / "train" / "train.py").write_text(RECORDING_TRAINING)
    dockerfile = entry / "train" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("CMD", "COPY train.py /train.py\nCMD"))
    (entry / "entry.yaml").write_text(
        (entry / "entry.yaml").read_text() + "record_path: /work/record\n"
    )
    (entry / "weights" / "model.bin").write_text(f"trained with {seed}")
    (entry / "training").mkdir()
    rows = [{"step": s, "loss": 2.0 / s + seed % 97 / 1000} for s in range(1, 9)]
    (entry / "training" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (entry / "training" / "run_record.json").write_text(json.dumps({"seed": seed}))
    return entry


@pytest.mark.docker
@pytest.mark.helm
def test_a_replay_is_checked_step_by_step_and_repeated_runs_get_a_verdict(
    tmp_path: Path, base_image: str, helm_bin: Path, cleanup: list[str]
) -> None:
    entry = _recording_entry(tmp_path / "entries", seed=1234)
    results = tmp_path / "results"
    original = RunOptions(
        track="4090", stage="open", out=results, max_eval_instances=3,
        run_specs=str(write_conf(tmp_path, 3)), base_image=base_image, health=QUICK_HEALTH,
        mem_limit="256m", max_sequence_length=256, deadline_s=300,
    )  # fmt: skip
    cleanup += [entry_slug("recorded"), entry_slug("recorded-reproduced")]
    [outcome] = run_entries(tmp_path / "entries", original)
    assert outcome.status is Status.SCORED, outcome.reason

    replay = reproduce_entry(entry, _options(results, base_image, replay=True))

    assert replay.verdict is Verdict.REPRODUCED, (replay.reason, replay.log_tail)
    assert replay.seeds == (1234,) and replay.weights_identical is True
    assert replay.curve is not None and replay.curve.matches and replay.curve.steps == 8
    assert "agree within 1.00% over 8 steps" in replay.reason
    record = json.loads((replay.folder / "record" / "run_record.json").read_text())
    assert record == {"seed": 1234, "deterministic": True}
    # The original was scored on 3 instances: its noise floor comes from them.
    assert replay.noise["local_task"].value == 1.0
    markdown = (replay.folder / "reproduction.md").read_text()
    assert "## Loss curve (replay)" in markdown and "identical to the submitted" in markdown
    assert "| local_task | 1.0000 | [1.0000, 1.0000] | 1.0000 |" in markdown

    # The same entry whose logged losses were altered from step 5 on.
    rows = [
        json.loads(line) for line in (entry / "training" / "metrics.jsonl").read_text().splitlines()
    ]
    altered = [r | {"loss": r["loss"] * 1.5} if r["step"] >= 5 else r for r in rows]
    (entry / "training" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in altered)
    )
    # ... and whose shipped weights are not the ones its training makes.
    (entry / "weights" / "model.bin").write_text("tuned by hand")
    parted = reproduce_entry(entry, _options(results, base_image, replay=True))
    assert parted.verdict is Verdict.DIFFERS and parted.exit_code == 1
    assert parted.weights_identical is False
    assert parted.curve is not None and parted.curve.parted_at == 5
    assert parted.reason.startswith("the loss curves part at step 5")
    report = json.loads((parted.folder / "reproduction.json").read_text())
    assert report["curve"]["parted_at"] == 5 and report["verdict"] == "differs"

    runs = reproduce_entry(entry, _options(results, base_image, runs=3))
    assert runs.verdict is Verdict.REPRODUCED, (runs.reason, runs.log_tail)
    seeds = json.loads((runs.folder / "seeds.json").read_text())
    assert len(set(seeds)) == 3 and list(runs.seeds) == seeds
    for i, seed in enumerate(seeds, 1):  # each run trained with the seed drawn for it
        run_record = runs.folder / "runs" / f"run-{i}" / "record" / "run_record.json"
        assert json.loads(run_record.read_text())["seed"] == seed
    assert [r.seed for r in runs.runs] == seeds
    judgement = runs.judgements["local_task"]
    assert judgement.runs == (1.0, 1.0, 1.0) and judgement.p_value == 1.0
    assert runs.curve is None and runs.weights_identical is None
    assert "## Verdict statistics" in (runs.folder / "reproduction.md").read_text()


def test_a_replay_needs_the_entrys_record_and_excludes_runs(tmp_path: Path) -> None:
    entry = _foreign_entry(tmp_path / "entries", "unrecorded", "true")
    results = tmp_path / "results"
    _fake_original(results, "unrecorded", write_conf(tmp_path, 3))
    command = ["reproduce", str(entry), "--track", "4090", "--results", str(results)]
    runner = CliRunner()
    no_record = runner.invoke(app, [*command, "--replay"])
    assert no_record.exit_code == 2 and "needs the entry's training record" in no_record.output
    both = runner.invoke(app, [*command, "--replay", "--runs", "3"])
    assert both.exit_code == 2 and "--runs draws fresh seeds" in both.output
    assert runner.invoke(app, [*command, "--runs", "0"]).exit_code == 2
    assert runner.invoke(app, [*command, "--loss-tolerance", "-1"]).exit_code == 2


def test_the_report_shows_the_verdicts_statistics_and_where_the_curves_part(
    tmp_path: Path,
) -> None:
    field = {"top": _metrics({"gsm": 0.30, "mmlu:subject=a": 0.5})}
    runs = [compare("top", field, _metrics({"gsm": v, "mmlu:subject=a": 0.5})) for v in (0.2,)]
    noise = {"gsm": Interval(0.3, 0.02, 0.26, 0.34)}
    verdict, reason, judgements = judge(runs, 0.02, noise)
    curve = tuple(Point(s, 2.0 / s) for s in range(1, 7))
    parted = tuple(Point(p.step, p.loss * (1.5 if p.step >= 5 else 1.0)) for p in curve)
    result = Reproduction(
        entry="top", track="4090", stage="open", verdict=verdict, reason=reason,
        time_limit_s=60, tolerance=0.02, training=None, weights={}, comparison=runs[0],
        log_tail="", folder=tmp_path, seeds=(1234,), curve=compare_curves(curve, parted, 0.01),
        weights_identical=False, noise=noise, judgements=judgements,
    )  # fmt: skip
    markdown = to_markdown(result)
    assert "| gsm | 0.3000 | [0.2600, 0.3400] | 0.2000 | 0.2000 | -0.1000 | n/a | differs |" in (
        markdown
    )
    assert "| mmlu | 0.5000 | n/a | 0.5000 | 0.5000 | +0.0000 | n/a | reproduced |" in markdown
    assert "first step where they part: 5." in markdown
    assert "| 5 | 0.4 | 0.600000 | 0.333 ⟵ parts |" in markdown
    assert "different from the submitted ones" in markdown
    data = json.loads(to_json(result))
    assert data["curve"]["parted_at"] == 5 and data["judgements"]["gsm"]["verdict"] == "differs"
    assert data["noise"]["gsm"]["low"] == 0.26 and data["seeds"] == [1234]
