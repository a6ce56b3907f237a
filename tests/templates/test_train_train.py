"""train.py on the tiny model: a real 4-bit QLoRA run on CPU (bitsandbytes, peft, transformers).

The helpers here (`write_examples`, `write_config`, `trained_run`) are shared with the merge tests.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
sys.path.insert(0, str(TRAIN_DIR))

import config as train_config  # noqa: E402
import torch  # noqa: E402
import train  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def write_examples(path: Path, count: int = 50) -> Path:
    """`count` distinct alpaca-format examples with short, learnable answers."""
    rows = [
        {
            "instruction": f"question {i} : what is {i} plus {i % 7} ?",
            "input": "",
            "output": f"the answer is {i + i % 7} .",
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp: Path, model_dir: Path, **overrides: Any) -> Path:
    data = {
        "track": "4090",
        "base_model": str(model_dir),
        "datasets": [{"source": str(write_examples(tmp / "train.jsonl")), "format": "alpaca"}],
        "quantization": {"mode": "nf4", "compute_dtype": "float32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "neftune_noise_alpha": 5.0,
        "learning_rate": 0.005,
        "max_steps": 4,
        "micro_batch_size": 4,
        "max_seq_len": 64,
        "save_steps": 2,
        "logging_steps": 1,
        "seed": 42,  # the tests' runs are repeatable; the record test draws its own
        "output_dir": str(tmp / "output"),
        "merge": {"dtype": "float32", "tolerance": 1e-4, "output_dir": str(tmp / "merged")},
        **overrides,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trained_run(tmp: Path, model_dir: Path, **overrides: Any) -> train_config.TrainConfig:
    config = train_config.load_config(write_config(tmp, model_dir, **overrides))
    train.train(config)
    return config


class NeftuneProbe(TrainerCallback):
    """Records whether NEFTune's noise hook sits on the input embeddings while training runs."""

    hooked = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        embeddings = kwargs["model"].get_input_embeddings()
        self.hooked = self.hooked or bool(embeddings._forward_hooks)


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def test_qlora_run_with_neftune_trains_every_linear_layer(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir))
    probe = NeftuneProbe()
    summary = train.train(config, callbacks=[probe])

    assert summary["global_step"] == 4 and not summary["stopped_by_time_budget"]
    assert summary["tokens_seen"] > 0 and summary["tokens_per_s"] > 0
    assert summary["peak_memory_gib"] > 0
    assert probe.hooked, "NEFTune's embedding hook was not active during training"
    adapter = Path(summary["adapter"])
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert {t.rsplit(".", 1)[-1] for t in targets} == LINEARS
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    # peft starts every lora_B at zero: a non-zero B means that layer was trained.
    assert len(lora_b) == 2 * len(LINEARS)
    assert all(v.abs().max() > 0 for v in lora_b.values())
    report = json.loads((tmp_path / "output" / "data_report.json").read_text())
    assert report["total"]["sampled"] == 50


def test_loss_covers_response_tokens_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir))
    tokenizer = train.load_tokenizer(config)
    example = train.data.Example("what is 2 plus 3 ?", "five", "test")
    row = train.tokenize(example, config, tokenizer)
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    # The default template is the prompt itself; the answer follows it after a space, as HELM's do.
    assert tokenizer.decode(trained) == " five" + tokenizer.eos_token
    prompt_len = row["labels"].count(-100)
    assert tokenizer.decode(row["input_ids"][:prompt_len]) == "what is 2 plus 3 ?"


@pytest.mark.parametrize(
    ("template", "prompt", "response", "expected"),
    [
        ("{prompt}", "Question: 2+3?\nAnswer:", "B", ("Question: 2+3?\nAnswer:", " B")),
        ("{prompt}", "Summarize:\n", "A text.", ("Summarize:\n", "A text.")),
        ("{prompt}", "Answer:", " B", ("Answer:", " B")),
        ("Q: {prompt}\nA:", "{x} in braces?", "yes", ("Q: {x} in braces?\nA:", " yes")),
    ],
)
def test_a_completion_follows_the_wrapped_prompt_as_helm_shows_answers(
    template: str, prompt: str, response: str, expected: tuple[str, str]
) -> None:
    assert train_config.apply_template(template, prompt, response) == expected


def test_packing_fills_sequences_without_splitting_examples() -> None:
    rows = [{"input_ids": [1] * n, "labels": [2] * n} for n in (30, 30, 10, 50, 5)]
    packed = train.pack(rows, 64)
    assert [len(r["input_ids"]) for r in packed] == [60, 60, 5]
    assert all(len(r["labels"]) == len(r["input_ids"]) for r in packed)


def test_resume_after_a_crash_continues_the_step_count(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir))
    with pytest.raises(RuntimeError, match="simulated crash at step 3"):
        train.train(config, callbacks=[CrashAt(3)])
    output = tmp_path / "output"
    assert (output / "checkpoint-2").is_dir() and not (output / "adapter").exists()

    summary = train.train(config)
    assert summary["resumed_from"] == str(output / "checkpoint-2")
    assert summary["global_step"] == 4
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    # Only steps 3 and 4 ran in the resumed process; steps 1-2 come from the checkpoint's history.
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3, 4]


def test_time_budget_stops_early_and_leaves_a_usable_adapter(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # The budget counts from the script's start, so loading alone uses up 1 s: one step runs.
    path = write_config(tmp_path, tiny_model_dir, max_steps=500, time_budget="1s")
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "output" / "train_summary.json").read_text())
    assert summary["stopped_by_time_budget"] is True
    assert 1 <= summary["global_step"] < 500
    assert "tokens_per_s" in result.stdout + result.stderr

    from peft import PeftModel

    config = train_config.load_config(path)
    model = PeftModel.from_pretrained(train.load_base(config, "cpu"), summary["adapter"])
    tokenizer = train.load_tokenizer(config)
    ids = tokenizer("what is 2 plus 3 ?\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_a_config_that_cannot_fit_is_refused_before_any_weights_load(tmp_path: Path) -> None:
    # A folder with only a Mistral-7B config.json: the refusal must come before weights are needed.
    model_dir = tmp_path / "mistral-shape"
    model_dir.mkdir()
    shape = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
    }
    (model_dir / "config.json").write_text(json.dumps(shape))
    path = write_config(
        tmp_path, model_dir, micro_batch_size=16, max_seq_len=4096, gradient_checkpointing=False
    )
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "track 4090 has 24 GiB" in result.stderr and "DOES NOT FIT" in result.stderr
    assert "--ignore-memory-estimate" in result.stderr
    assert not (tmp_path / "output" / "curated.jsonl").exists()


def test_an_estimate_known_to_be_wrong_can_be_overridden_with_a_warning(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny model fits anywhere: shrink the track's GPU so the estimate refuses it.
    monkeypatch.setitem(train_config.TRACK_GPU_GIB, "4090", 1e-6)
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir, max_steps=1))
    with pytest.raises(train_config.ConfigError, match="--ignore-memory-estimate"):
        train.train(config)
    assert not (tmp_path / "output" / train.MARKER).exists()  # refused before the run began
    summary = train.train(config, ignore_memory_estimate=True)
    assert summary["global_step"] == 1


def test_a_run_of_another_config_in_the_same_folder_is_refused_and_fresh_trains_it_fully(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Monday's smoke run, then Wednesday's real run with another config in the same out/.
    smoke = train_config.load_config(write_config(tmp_path, tiny_model_dir, max_steps=2))
    assert train.train(smoke)["global_step"] == 2
    real = train_config.load_config(
        write_config(tmp_path, tiny_model_dir, max_steps=4, learning_rate=0.001, time_budget="1h")
    )
    with pytest.raises(train_config.ConfigError, match=r"another config or data.*--fresh"):
        train.train(real)
    summary = train.train(real, fresh=True)
    assert summary["global_step"] == 4 and summary["resumed_from"] is None
    assert not summary["stopped_by_time_budget"]


def test_a_finished_run_is_not_trained_again_and_the_cli_says_how(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    path = write_config(tmp_path, tiny_model_dir, max_steps=2)
    train.train(train_config.load_config(path))
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(path)],
        cwd=TRAIN_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "holds a finished run of this config" in result.stderr
    assert "run merge.py, or --fresh" in result.stderr


def test_changed_data_or_unrecorded_checkpoints_are_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train(config, callbacks=[CrashAt(3)])
    # Same config file, other data: the checkpoint is of another run.
    write_examples(tmp_path / "train.jsonl", count=40)
    with pytest.raises(train_config.ConfigError, match="another config or data"):
        train.train(config)
    (tmp_path / "output" / train.MARKER).unlink()
    with pytest.raises(train_config.ConfigError, match=r"no record of its config.*--fresh"):
        train.train(config)


def test_the_fingerprint_covers_data_folders_and_decontamination_sources(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder, evaluated = tmp_path / "dataset", tmp_path / "pack"
    for path in (folder, evaluated):
        (path / "part").mkdir(parents=True)
        (path / "part" / "file.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    config = train_config.load_config(write_config(
        tmp_path, tiny_model_dir, datasets=[{"source": str(folder), "format": "prompt-completion"}],
        curation={"decontaminate": [str(evaluated)]},
    ))  # fmt: skip
    before = train.fingerprint(config)
    (folder / "part" / "file.jsonl").write_text('{"prompt": "q", "completion": "c"}\n')
    after_data = train.fingerprint(config)
    (evaluated / "part" / "file.jsonl").write_text('{"prompt": "q", "completion": "c"}\n')
    assert len({before, after_data, train.fingerprint(config)}) == 3


def test_a_spent_budget_is_refused_rather_than_one_more_step(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = train_config.load_config(write_config(tmp_path, tiny_model_dir, time_budget="2h"))
    output = tmp_path / "output"
    output.mkdir()
    started = {"started": 0.0, "fingerprint": train.fingerprint(config), "finished": False}
    (output / train.MARKER).write_text(json.dumps(started))
    with pytest.raises(train_config.ConfigError, match=r"budget .* ended .* raise time_budget"):
        train.train(config)
    assert not (output / "adapter").exists()


def test_a_time_budget_sizes_the_schedule_so_the_learning_rate_ends_with_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = train_config.load_config(
        write_config(
            tmp_path, tiny_model_dir, max_steps=10**6, time_budget="60s", lr_scheduler="cosine"
        )
    )
    summary = train.train(config)
    assert summary["stopped_by_time_budget"]
    assert summary["scheduled_steps"] is not None
    assert MEASURED_STEPS_BEFORE_SIZING < summary["global_step"] < 10**6
    # It stopped at the schedule's end, not mid-schedule at the deadline.
    assert summary["global_step"] == summary["scheduled_steps"]
    # At the schedule's end: within 1% of the peak (the schedule is re-sized at every step from
    # the measured pace, so on a loaded machine the last step's rate can be a hair above 0).
    assert 0 <= summary["final_learning_rate"] <= 0.01 * config.learning_rate


MEASURED_STEPS_BEFORE_SIZING = train.MEASURED_STEPS + 1


def _curve(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_a_run_leaves_its_record_and_a_replay_with_its_seed_is_bit_identical(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(train.SEED_ENV, raising=False)
    for name in ("first", "replay", "other"):
        (tmp_path / name).mkdir()
    first = trained_run(tmp_path / "first", tiny_model_dir, seed=None)
    output = Path(first.output_dir)
    record = json.loads((output / "run_record.json").read_text())
    assert record["seed_source"] == "os" and 0 <= record["seed"] < 2**31
    report = (output / "data_report.json").read_bytes()
    assert record["data_report_sha256"] == hashlib.sha256(report).hexdigest()
    environment = record["environment"]
    assert environment["device"] == "cpu" and environment["packages"]["torch"] == torch.__version__
    assert environment["deterministic_algorithms"] is False
    curve = _curve(output)
    assert [row["step"] for row in curve] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 and row["grad_norm"] is not None for row in curve)
    assert all(row["learning_rate"] > 0 for row in curve)
    assert 0 < curve[0]["tokens_seen"] < curve[-1]["tokens_seen"]
    assert curve[0]["wall_time_s"] <= curve[-1]["wall_time_s"]

    # What `harness reproduce --replay` asks of the container: the logged seed, determinism on.
    monkeypatch.setenv(train.SEED_ENV, str(record["seed"]))
    monkeypatch.setenv(train.DETERMINISTIC_ENV, "1")
    replay = trained_run(tmp_path / "replay", tiny_model_dir, seed=None)
    replayed = json.loads((Path(replay.output_dir) / "run_record.json").read_text())
    assert (replayed["seed"], replayed["seed_source"]) == (record["seed"], train.SEED_ENV)
    assert replayed["environment"]["deterministic_algorithms"] is True
    assert [r["loss"] for r in _curve(Path(replay.output_dir))] == [r["loss"] for r in curve]
    adapter = "adapter/adapter_model.safetensors"
    assert (output / adapter).read_bytes() == (Path(replay.output_dir) / adapter).read_bytes()

    # A fresh seed trains other weights: the equality above is the seed's doing.
    monkeypatch.setenv(train.SEED_ENV, str(record["seed"] + 1))
    other = trained_run(tmp_path / "other", tiny_model_dir, seed=None)
    assert (Path(other.output_dir) / adapter).read_bytes() != (output / adapter).read_bytes()


def test_the_reproductions_environment_names_are_the_ones_train_reads() -> None:
    # Templates never import harness: the two copies of the names must agree.
    from harness.reproduce import flow
    from harness.reproduce.curves import METRICS_FILE, RECORD_FILE
    from harness.reproduce.options import Manifest

    assert (flow.SEED_ENV, flow.DETERMINISTIC_ENV) == (train.SEED_ENV, train.DETERMINISTIC_ENV)
    assert RECORD_FILE == "run_record.json" and METRICS_FILE == "metrics.jsonl"
    # The training image's WORKDIR is /app; the shipped configs' output_dir is relative to it.
    for track in ("4090", "A100"):
        shipped = yaml.safe_load((TRAIN_DIR.parent / "configs" / f"{track}.yaml").read_text())
        assert Manifest().record_path == f"/app/{shipped['output_dir']}"
