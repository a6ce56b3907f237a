"""`harness sweep`: variants of a real rendered submission's training config, trained and merged by
the template's own train.py and merge.py on the tiny model (4-bit QLoRA on the CPU), scored by
real HELM on the parity task (the demo's local task) through `harness eval`'s path; a real sweep
process killed mid-sweep and run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.evaluate.sweep import RESULT, apply_override, load_sweep
from harness.helm.packs import Pack
from harness.submission.render import render_submission
from scripts.demo import configure_task_training
from tests._wait import until
from tests.conftest import REPO
from tests.harness.evaluate import harness, task_pack


@pytest.fixture(scope="module")
def parity_pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    return task_pack(tmp_path_factory.mktemp("pack"), "parity")


def _submission(folder: Path, base_model: Path) -> Path:
    """The demo's trained entry's config (the parity questions, as HELM asks them), with a fixed
    seed and a warmup: a variant stopped after its first step has not learnt anything yet."""
    submission = render_submission("4090", "mine", folder).path
    configure_task_training(submission, base_model)
    config_file = submission / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config.update(seed=42, warmup_steps=5)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return submission


def _write_sweep(path: Path, body: Mapping[str, object]) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_the_sweep_file_is_checked_and_a_grid_expands(tmp_path: Path) -> None:
    submission = tmp_path / "sub"
    submission.mkdir()
    for name in ("train.py", "merge.py", "config.yaml"):
        (submission / name).write_text("")
    base = {"submission": "sub", "base": "config.yaml", "instances": "pack"}
    sweep = load_sweep(_write_sweep(tmp_path / "s.yaml", {
        **base,
        "variants": [{"name": "small", "overrides": {"lora.r": 8}}],
        "grid": {"learning_rate": [0.001, 0.002], "datasets.0.weight": [0.5, 1.0]},
    }))  # fmt: skip
    assert [v.name for v in sweep.variants] == [
        "small",
        "learning_rate=0.001,datasets.0.weight=0.5",
        "learning_rate=0.001,datasets.0.weight=1.0",
        "learning_rate=0.002,datasets.0.weight=0.5",
        "learning_rate=0.002,datasets.0.weight=1.0",
    ]
    assert sweep.out == tmp_path / "s-out" and sweep.instances == tmp_path / "pack"
    refused: dict[str, tuple[Mapping[str, object], str]] = {
        "an unknown key": ({**base, "variant": []}, "unknown key"),
        "no variants": (base, "no variants"),
        "two alike": ({**base, "variants": [{"name": "a"}, {"name": "a"}]}, "named alike"),
        "a bad name": ({**base, "variants": [{"name": "../x"}]}, "must match"),
        "an empty grid list": ({**base, "grid": {"lora.r": []}}, "non-empty list"),
        "no base": ({**base, "base": "nope.yaml", "grid": {"x": [1]}}, "does not exist"),
        "no scripts": ({**base, "submission": ".", "base": "sub/config.yaml",
                        "grid": {"x": [1]}}, "has no train.py, merge.py"),
    }  # fmt: skip
    for body, message in refused.values():
        with pytest.raises(ConfigError, match=message):
            load_sweep(_write_sweep(tmp_path / "bad.yaml", body))


def test_overrides_reach_nested_keys_and_list_items_and_refuse_missing_parents() -> None:
    config = {"lora": {"r": 64}, "datasets": [{"source": "a"}, {"source": "b"}]}
    apply_override(config, "lora.r", 8)
    apply_override(config, "datasets.1.weight", 0.5)
    apply_override(config, "max_steps", 10)
    assert config == {
        "lora": {"r": 8},
        "datasets": [{"source": "a"}, {"source": "b", "weight": 0.5}],
        "max_steps": 10,
    }
    for key, message in (
        ("quant.mode", "has no quant"),
        ("datasets.2.weight", "not an index of a 2-list"),
        ("lora.r.x", "lora.r is not a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_override(config, key, 1)


@pytest.mark.helm
def test_dry_run_checks_every_variant_with_the_templates_config(
    tiny_model_dir: Path, parity_pack: Pack, tmp_path: Path
) -> None:
    _submission(tmp_path / "mine", tiny_model_dir)
    body = {"submission": "mine", "base": "config.yaml", "instances": str(parity_pack.path)}
    bad = _write_sweep(tmp_path / "bad.yaml", {**body, "variants": [
        {"name": "typo", "overrides": {"lora.rank": 8}}]})  # fmt: skip
    run = harness("sweep", str(bad), "--dry-run")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "typo" in run.stderr and "rank" in run.stderr  # the template's own message
    good = _write_sweep(tmp_path / "good.yaml", {**body, "grid": {"max_steps": [1, 30]}})
    run = harness("sweep", str(good), "--dry-run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "max_steps=1: max_steps=1; train 20.0 min (at most: its time_budget)" in run.stdout
    assert "the first variant measures it" in run.stdout
    assert not (tmp_path / "good-out").exists()  # a dry run writes nothing


@pytest.mark.helm
def test_a_killed_sweep_resumes_and_the_variant_that_trained_enough_ranks_first(
    tiny_model_dir: Path, parity_pack: Pack, tmp_path: Path, helm_bin: Path
) -> None:
    _submission(tmp_path / "mine", tiny_model_dir)
    sweep_file = _write_sweep(tmp_path / "sweep.yaml", {
        "submission": "mine", "base": "config.yaml", "instances": str(parity_pack.path),
        "out": "out",
        "variants": [
            {"name": "one-step", "overrides": {"max_steps": 1}},
            {"name": "thirty-steps", "overrides": {"max_steps": 30}},
        ],
    })  # fmt: skip
    out = tmp_path / "out"
    first, second = out / "variants" / "one-step", out / "variants" / "thirty-steps"

    # A real sweep, killed (SIGKILL: no chance to clean up) while it trains the second variant.
    log = (tmp_path / "first-run.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "harness"), "sweep", str(sweep_file)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        until(
            lambda: (second / "train.log").exists(),
            "the sweep finished the first variant and started training the second",
            timeout_s=900,
            interval_s=0.5,
            check=lambda: None if process.poll() is None else "the sweep exited early",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        log.close()
    record = (first / RESULT).read_bytes()
    trained_at = (first / "train.log").stat().st_mtime_ns
    assert not (second / RESULT).exists()
    # Its training died with it (nothing left running on the second variant's config).
    until(
        lambda: (
            not any(str(second / "config.yaml") in _cmdline(pid) for pid in os.listdir("/proc"))
        ),
        "the killed sweep's training process is gone",
    )

    run = harness("sweep", str(sweep_file))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "one-step: finished before: kept" in run.stdout
    assert "thirty-steps: scored" in run.stdout
    # The finished variant was not trained again: its record and its training log are as they were.
    assert (first / RESULT).read_bytes() == record
    assert (first / "train.log").stat().st_mtime_ns == trained_at
    assert json.loads((second / RESULT).read_text())["steps"] == 30

    results = out / "results"
    comparison = json.loads((results / "comparison.json").read_text())
    assert comparison["best"] == "thirty-steps"
    ranked = {e["entry"]: e for e in comparison["entries"]}
    assert [e["entry"] for e in comparison["entries"]] == ["thirty-steps", "one-step"]
    trained, untrained = ranked["thirty-steps"], ranked["one-step"]
    assert trained["rank"] == 1
    assert trained["scenarios"]["parity"]["value"] > untrained["scenarios"]["parity"]["value"]
    versus = untrained["versus_best"]["parity"]
    assert versus["significant"] and versus["high"] < 0
    assert "max_steps=1; 1 step(s), train" in untrained["note"]
    for name in ("comparison.md", "comparison.html", "leaderboard.html", "leaderboard.json"):
        assert (results / name).is_file(), name
    assert "significant" in (results / "comparison.md").read_text()
    # The dry run now plans nothing but keeps both, and times from what was measured.
    plan = harness("sweep", str(sweep_file), "--dry-run")
    assert plan.returncode == 0 and plan.stdout.count("finished, kept") == 2, plan.stdout


def _cmdline(pid: str) -> str:
    try:
        return Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return ""
