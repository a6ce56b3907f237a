"""The competition's facts live in harness/competition.py; every copy that cannot import it agrees.

The submission templates never import the harness (a submission must run without it), so they
keep their own table of tracks; the service's OpenAPI schema needs a Literal. Adding a track is
one edit in competition.py plus these copies, and this test names any that was missed.
"""

from __future__ import annotations

import importlib.util
import sys
import typing
from pathlib import Path

import pytest
import yaml

from harness.competition import STAGES, TRACK_GPU_GIB, TRACK_NAMES, TRACKS, stages_text, tracks_text
from harness.run.options import RunOptions
from harness.service import api
from harness.submission.render import render_submission
from tests.conftest import REPO

TEMPLATES = REPO / "templates"


def _template_config() -> typing.Any:
    spec = importlib.util.spec_from_file_location(
        "template_config", TEMPLATES / "train" / "config.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_stage_weights_add_up_to_one_and_closed_weighs_double() -> None:
    assert sum(stage.weight for stage in STAGES.values()) == pytest.approx(1.0)
    assert STAGES["closed"].weight == pytest.approx(2 * STAGES["open"].weight)
    assert [stage.minutes for stage in STAGES.values()] == [300, 600]


def test_templates_training_config_agrees() -> None:
    config = _template_config()
    assert {name: float(gib) for name, gib in TRACK_GPU_GIB.items()} == config.TRACK_GPU_GIB
    track_field = config.TrainConfig.model_fields["track"].annotation
    assert set(typing.get_args(track_field)) == set(TRACK_NAMES)


def test_every_track_has_a_shipped_preset_that_names_its_memory() -> None:
    presets = {path.stem: path for path in (TEMPLATES / "configs").glob("*.yaml")}
    assert set(presets) == set(TRACK_NAMES)
    for name, path in presets.items():
        assert yaml.safe_load(path.read_text())["track"] == name
        assert f"{TRACKS[name].gpu_gib} GiB" in path.read_text(), path


def test_service_schema_lists_the_tracks() -> None:
    assert typing.get_args(api.Track) == TRACK_NAMES


def test_every_track_renders_a_submission_and_runs(tmp_path: Path) -> None:
    for name in TRACK_NAMES:
        assert RunOptions(track=name, stage="open", out=tmp_path).track == name
        submission = render_submission(name, f"entry-{name.lower()}", tmp_path / name)
        config = yaml.safe_load((submission.path / "config.yaml").read_text())
        assert config["track"] == name


def test_help_texts_come_from_the_table() -> None:
    assert tracks_text() == "4090 (24 GiB) or A100 (40 GiB)"
    assert stages_text() == "open (300 min) or closed (600 min)"
