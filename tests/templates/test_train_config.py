"""The training config: every shipped YAML loads, axolotl's names work, errors name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
PRESETS = sorted((TRAIN_DIR.parent / "configs").glob("*.yaml"))
sys.path.insert(0, str(TRAIN_DIR))

from config import ConfigError, from_dict, load_config, parse_duration  # noqa: E402

MINIMAL: dict[str, Any] = {
    "track": "4090",
    "base_model": "./model",
    "datasets": [{"source": "data.jsonl", "format": "alpaca"}],
}


def error_for(**changes: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        from_dict({**MINIMAL, **changes})
    return str(caught.value)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_loads_with_a_comment_on_every_key(preset: Path) -> None:
    config = load_config(preset)
    assert config.track == preset.stem
    assert config.revision and len(config.revision) == 40  # a pinned commit sha
    assert config.time_budget is not None and config.time_budget <= 22 * 3600
    for line in preset.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith(("#", "-")):
            assert " # " in line, f"{preset.name}: key without a comment: {line!r}"


def test_both_presets_are_the_same_but_for_the_track_and_batch_shape() -> None:
    configs = {p.stem: load_config(p).model_dump() for p in PRESETS}
    assert set(configs) == {"4090", "A100"}
    for key in ("track", "micro_batch_size", "gradient_accumulation_steps"):
        configs["4090"].pop(key), configs["A100"].pop(key)
    assert configs["4090"] == configs["A100"]


def test_axolotl_names_are_accepted() -> None:
    config = from_dict(
        {
            **MINIMAL,
            "datasets": [{"path": "data.jsonl", "type": "sharegpt"}],
            "lora_r": 32,
            "lora_alpha": 64,
            "lora_dropout": 0.1,
            "lora_target_modules": ["q_proj", "v_proj"],
            "sequence_len": 1024,
            "micro_batch_size": 3,
            "num_epochs": 2,
            "neftune_noise_alpha": 7,
        }
    )
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (32, 64, 0.1)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert (config.max_seq_len, config.micro_batch_size, config.epochs) == (1024, 3, 2)
    assert config.neftune_noise_alpha == 7
    assert config.datasets[0].format == "sharegpt"


def test_an_axolotl_name_beside_ours_is_refused() -> None:
    assert "`lora_r` and `lora.r` both given" in error_for(lora_r=8, lora={"r": 16})
    assert "`sequence_len` and `max_seq_len` both given" in error_for(
        sequence_len=8, max_seq_len=16
    )


def test_errors_name_every_bad_key_at_once() -> None:
    message = error_for(
        lora={"r": 0},
        learnin_rate=1e-4,
        quantization={"mode": "int3"},
        datasets=[{"source": "a.jsonl", "format": "alpaca", "weight": 1, "max_samples": 2}],
    )
    assert "lora.r: Input should be greater than 0 (got 0)" in message
    assert "learnin_rate: unknown key; did you mean `learning_rate`?" in message
    assert "quantization.mode: Input should be 'nf4', 'fp4' or 'none' (got 'int3')" in message
    assert "datasets.0: give `weight` or `max_samples`, not both" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"base_model": "mistralai/Mistral-7B-v0.1"}, "pin `revision` to a commit sha"),
        ({"base_model": "not a model id"}, "neither a local folder nor a hub id"),
        ({"prompt_template": "no slot"}, "prompt_template: must contain the placeholder {prompt}"),
        ({"time_budget": "a day"}, "time_budget: 'a day' is not a duration"),
        ({"track": "H100"}, "track: Input should be '4090' or 'A100'"),
        ({"datasets": []}, "datasets: List should have at least 1 item"),
        ({"lora": {"target_modules": []}}, "lora.target_modules"),
        ({"merge": {"tolerence": 1}}, "merge.tolerence: unknown key; did you mean `tolerance`?"),
        (
            {"datasets": [{"source": "a.jsonl", "format": "alpaca"}] * 2},
            "a source is listed twice",
        ),
    ],
)
def test_clear_error_for(changes: dict[str, Any], expected: str) -> None:
    assert expected in error_for(**changes)


def test_a_missing_key_is_named() -> None:
    with pytest.raises(ConfigError, match="base_model: Field required"):
        from_dict({"track": "4090", "datasets": MINIMAL["datasets"]})


def test_durations() -> None:
    assert parse_duration("21h30m") == 21.5 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("3600") == 3600
    assert from_dict({**MINIMAL, "time_budget": 60}).time_budget == 60


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("track: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_cli_prints_the_full_config_or_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "lora_r": 4}))
    ok = subprocess.run(
        [sys.executable, "config.py", str(path)], cwd=TRAIN_DIR, capture_output=True, text=True
    )
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["lora"]["r"] == 4
    path.write_text(yaml.safe_dump({**MINIMAL, "lora_r": -1}))
    bad = subprocess.run(
        [sys.executable, "config.py", str(path)], cwd=TRAIN_DIR, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "lora.r" in bad.stderr
