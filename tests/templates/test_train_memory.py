"""memory.py: the peak-memory estimate, its refusal message, and its parameter count against peft.

The GPU validation (estimate vs measured peak on a random Mistral-7B-shaped model) needs a GPU and
is not part of this suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
PRESETS = TRAIN_DIR.parent / "configs"
sys.path.insert(0, str(TRAIN_DIR))

import memory  # noqa: E402
from config import ConfigError, from_dict, load_config  # noqa: E402

MISTRAL_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32000,
}
SHAPE = memory.ModelShape.from_config(MISTRAL_7B)


def preset(track: str, **changes: Any) -> Any:
    return from_dict({**load_config(PRESETS / f"{track}.yaml").model_dump(), **changes})


@pytest.mark.parametrize(("track", "low", "high"), [("4090", 12, 20), ("A100", 18, 30)])
def test_presets_fit_their_track_with_a_margin(track: str, low: float, high: float) -> None:
    estimate = memory.check(SHAPE, preset(track))
    assert low * memory.GIB < estimate.total < high * memory.GIB
    assert estimate.total < 0.9 * estimate.gpu_gib * memory.GIB


def test_lora_count_for_mistral_r64_all_linear() -> None:
    # per layer: r * (in + out) summed over q, k, v, o, gate, up, down
    per_layer = 64 * (8192 + 5120 + 5120 + 8192 + 3 * (4096 + 14336))
    assert memory.lora_parameters(SHAPE, preset("4090")) == 32 * per_layer == 167_772_160


@pytest.mark.parametrize(
    "targets", ["all-linear", "attention", "mlp", ["q_proj", "v_proj"], ["v_proj", "lm_head"]]
)
def test_lora_count_matches_peft_on_the_tiny_model(tiny_model_dir: Path, targets: Any) -> None:
    import train
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = from_dict(
        {
            "track": "4090",
            "base_model": str(tiny_model_dir),
            "datasets": [{"source": "d.jsonl", "format": "alpaca"}],
            "lora": {"r": 8, "target_modules": targets},
        }
    )
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), train.lora_config(config)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = memory.ModelShape.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert memory.lora_parameters(shape, config) == trainable
    assert memory.estimate(shape, config).total > 0  # lm_head's adapter is not a layer's


def test_memory_levers_move_the_estimate_the_right_way() -> None:
    base = memory.estimate(SHAPE, preset("4090")).parts
    no_checkpointing = memory.estimate(SHAPE, preset("4090", gradient_checkpointing=False)).parts
    eager = memory.estimate(SHAPE, preset("4090", attn_implementation="eager")).parts
    longer = memory.estimate(SHAPE, preset("4090", max_seq_len=4096)).parts
    eight_bit = memory.estimate(SHAPE, preset("4090", optimizer="paged_adamw_8bit")).parts
    no_double = memory.estimate(
        SHAPE, preset("4090", quantization={"mode": "nf4", "double_quant": False})
    ).parts
    assert no_checkpointing["activations"] > 5 * base["activations"]
    assert eager["activations"] > base["activations"]
    assert longer["logits"] == 2 * base["logits"]
    lora = next(k for k in base if k.startswith("LoRA"))
    assert eight_bit[lora] < base[lora]
    assert no_double["4-bit weights"] > base["4-bit weights"]


def test_a_config_that_cannot_fit_is_refused_with_what_to_change() -> None:
    config = preset("4090", micro_batch_size=8, gradient_checkpointing=False)
    with pytest.raises(ConfigError) as caught:
        memory.check(SHAPE, config)
    message = str(caught.value)
    assert "track 4090 has 24 GiB" in message
    assert "lower micro_batch_size, max_seq_len or lora.r" in message
    assert "DOES NOT FIT" in message and "activations" in message
    # the same config fits the A100 track's bigger GPU only with checkpointing back on
    memory.check(SHAPE, preset("A100", micro_batch_size=8))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ConfigError, match="lacks intermediate_size, vocab_size"):
        memory.ModelShape.from_config(
            {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        )
    config = preset("4090", lora={"target_modules": ["q_proj", "c_attn"]})
    with pytest.raises(ConfigError, match=r"\['c_attn'\] are not linear layers"):
        memory.estimate(SHAPE, config)


def run_cli(tmp_path: Path, **changes: Any) -> subprocess.CompletedProcess[str]:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(preset("4090", **changes).model_dump()))
    model_config = tmp_path / "config.json"
    model_config.write_text(json.dumps(MISTRAL_7B))
    command = ["memory.py", "--config", str(config_path), "--model-config", str(model_config)]
    return subprocess.run(
        [sys.executable, *command], cwd=TRAIN_DIR, capture_output=True, text=True, timeout=60
    )


def test_cli_prints_the_breakdown_and_exits_2_when_it_does_not_fit(tmp_path: Path) -> None:
    ok = run_cli(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "4-bit weights" in ok.stdout and "GiB of 24 GiB: fits" in ok.stdout
    too_big = run_cli(tmp_path, micro_batch_size=16)
    assert too_big.returncode == 2 and "DOES NOT FIT" in too_big.stderr
