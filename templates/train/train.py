"""QLoRA fine-tuning of the base model on the curated data mixture, within a time budget.

    python train.py --config config.yaml

Steps: validate the config; fetch only the base model's config.json and refuse a config whose
estimated peak memory does not fit the track's GPU (memory.py); curate the data (data.py); load the
base in 4 bits, add LoRA adapters and train with the loss on response tokens only, NEFTune, a
progress bar and tokens/s + peak memory in the logs. Checkpoints land in output_dir every
save_steps; a re-run resumes from the latest one and continues its step count. When the time
budget (counted from the run's first start, so a resumed run keeps the same deadline) runs out,
training stops cleanly, the adapter is saved and the script exits 0. The adapter ends up in
output_dir/adapter.

The run leaves its record in output_dir, for the submission's training/ folder and for
`harness reproduce`: metrics.jsonl (per logged step: loss, learning rate, tokens seen, grad norm,
wall time) and run_record.json (the seed, the data's hashes, library versions, the device and the
determinism settings). The seed is $TRAIN_SEED if set (a reproduction sets it), else the config's,
else a resumed run's own, else drawn from the OS; TRAIN_DETERMINISTIC=1 turns on torch's
deterministic algorithms.
Exit codes: 0 done (or stopped by the budget), 2 a bad config or one that does not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import data
import memory
import torch
from config import ConfigError, TrainConfig, load_config
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

IGNORE_INDEX = -100  # label value the loss skips: prompt and padding tokens
SEED_ENV = "TRAIN_SEED"
DETERMINISTIC_ENV = "TRAIN_DETERMINISTIC"
RECORDED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def quantization_config(config: TrainConfig) -> BitsAndBytesConfig | None:
    """The 4-bit settings; merge.py re-loads the base with exactly these."""
    q = config.quantization
    if q.mode == "none":
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.mode,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
    )


def load_base(config: TrainConfig, device: str) -> Any:
    """The base model in the training quantization, safe to run on CPU as well as GPU."""
    model = AutoModelForCausalLM.from_pretrained(
        config.base_model,
        revision=config.revision,
        quantization_config=quantization_config(config),
        dtype=DTYPES[config.quantization.compute_dtype],
        attn_implementation=config.attn_implementation,
        device_map={"": device},
    )
    if config.quantization.mode != "none":
        import bitsandbytes as bnb

        # On CPUs with AVX512-BF16, bitsandbytes rearranges a 4-bit weight in place the first time
        # it runs under no_grad in eval mode; gradients through it are then lost and merges wrong.
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model


def load_tokenizer(config: TrainConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, revision=config.revision)
    if tokenizer.pad_token is None:  # Llama/Mistral ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def tokenize(example: data.Example, config: TrainConfig, tokenizer: Any) -> dict[str, list[int]]:
    """Prompt and response are tokenized apart so the label mask falls exactly on the boundary.
    The prompt gets the tokenizer's own special tokens (BOS for Mistral), as the server does."""
    prompt = tokenizer(config.prompt_template.format(prompt=example.prompt))["input_ids"]
    response = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    response = [*response, tokenizer.eos_token_id]
    return {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}


def pack(rows: list[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Greedily concatenate examples, in order, into sequences of at most max_len tokens."""
    packed: list[dict[str, list[int]]] = []
    for row in rows:
        if packed and len(packed[-1]["input_ids"]) + len(row["input_ids"]) <= max_len:
            packed[-1] = {k: packed[-1][k] + row[k] for k in row}
        else:
            packed.append(dict(row))
    return packed


class Collator:
    """Right-pads a batch to a multiple of 8 tokens (tensor-core friendly)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // 8) * 8

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {
            "input_ids": padded("input_ids", self.pad_id),
            "labels": padded("labels", IGNORE_INDEX),
            "attention_mask": torch.tensor(mask),
        }


def peak_memory_gib() -> float:
    """Peak GPU memory torch allocated, or the process's peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / memory.GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / memory.GIB


class Monitor(TrainerCallback):
    """Adds tokens/s and peak memory to the logs; stops cleanly when the deadline passes."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.stopped_by_budget = False
        self.started = time.monotonic()
        self.tokens_at_start = 0
        self.first_step = 1

    def on_train_begin(
        self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.first_step = state.global_step + 1
        self.started = time.monotonic()
        self.tokens_at_start = state.num_input_tokens_seen

    def tokens_per_second(self, state: TrainerState) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (state.num_input_tokens_seen - self.tokens_at_start) / elapsed

    def on_log(
        self,
        args: Any,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is not None:
            logs["tokens_per_s"] = round(self.tokens_per_second(state), 1)
            logs["peak_mem_gib"] = round(peak_memory_gib(), 3)

    def on_step_end(
        self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == self.first_step:  # the first step pays one-off warm-up costs
            self.started = time.monotonic()
            self.tokens_at_start = state.num_input_tokens_seen
        if self.deadline is not None and time.time() >= self.deadline:
            self.stopped_by_budget = True
            control.should_training_stop = True


class Recorder(TrainerCallback):
    """Appends every logged step to output_dir/metrics.jsonl, the curve a replay is checked on."""

    def __init__(self, out: Path) -> None:
        self.path = out / "metrics.jsonl"
        self.started = time.monotonic()

    def on_train_begin(
        self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A resumed run redoes the steps after its checkpoint: the crashed process's lines for
        # them go, so each step is logged once; wall time goes on from the last kept line.
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if json.loads(line)["step"] <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        before = json.loads(kept[-1])["wall_time_s"] if kept else 0.0
        self.started = time.monotonic() - before

    def on_log(
        self,
        args: Any,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or "loss" not in logs:  # the final summary has train_loss, not loss
            return
        row = {
            "step": state.global_step,
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "tokens_seen": state.num_input_tokens_seen,
            "grad_norm": logs.get("grad_norm"),
            "wall_time_s": round(time.monotonic() - self.started, 3),
        }
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")


def resolve_seed(config: TrainConfig, out: Path) -> tuple[int, str]:
    """The run's seed and where it came from; a resumed run keeps the seed it drew."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV]), SEED_ENV
    if config.seed is not None:
        return config.seed, "config"
    record = out / "run_record.json"
    if record.exists():
        return int(json.loads(record.read_text())["seed"]), "resumed"
    return int.from_bytes(os.urandom(4)) >> 1, "os"  # 31 bits: numpy's seeds stop at 2**32


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(out: Path, seed: int, source: str) -> dict[str, Any]:
    """run_record.json: what a reviewer needs to replay this run and to tell why it differs."""
    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    record = {
        "seed": seed,
        "seed_source": source,
        "data_report_sha256": sha256_of(out / "data_report.json"),
        "curated_sha256": sha256_of(out / "curated.jsonl"),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": versions,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cuda": torch.version.cuda if cuda else None,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
    }
    (out / "run_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def deadline(config: TrainConfig, out: Path) -> float | None:
    """The wall-clock end of the budget, fixed at the run's first start in this output_dir."""
    if config.time_budget is None:
        return None
    marker = out / "run_started.json"
    if marker.exists():
        started = float(json.loads(marker.read_text())["started"])
    else:
        started = time.time()
        marker.write_text(json.dumps({"started": started}) + "\n")
    return started + config.time_budget


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    targets = config.lora.target_modules
    named = {"attention": list(memory.ATTENTION), "mlp": list(memory.MLP)}
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=named.get(targets, targets) if isinstance(targets, str) else targets,
        task_type="CAUSAL_LM",
    )


def check_memory(config: TrainConfig) -> memory.Estimate:
    """Only config.json is fetched here: a config that cannot fit fails before any weights."""
    try:
        model_config = AutoConfig.from_pretrained(config.base_model, revision=config.revision)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config of base_model {config.base_model!r}: {exc}"
        ) from None
    shape = memory.ModelShape.from_config(model_config.to_dict(), origin=config.base_model)
    return memory.check(shape, config)


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to output_dir."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    end = deadline(config, out)
    seed, seed_source = resolve_seed(config, out)
    config = config.model_copy(update={"seed": seed})  # the data mixture draws with it too
    print(f"seed {seed} ({seed_source})")
    print(check_memory(config).table())

    tokenizer = load_tokenizer(config)
    rows_of = {}

    def too_long(example: data.Example) -> bool:
        rows_of[example] = tokenize(example, config, tokenizer)
        return len(rows_of[example]["input_ids"]) > config.max_seq_len

    examples, report = data.prepare(config, too_long)
    data.print_report(report)
    data.save(examples, report, out)
    if not examples:
        raise ConfigError("no training examples are left after curation (see data_report.json)")
    rows = [rows_of[e] for e in examples]
    if config.packing:
        rows = pack(rows, config.max_seq_len)

    cuda = torch.cuda.is_available()
    torch.manual_seed(seed)
    model = load_base(config, "cuda:0" if cuda else "cpu")
    checkpointing = {"use_reentrant": False}
    if config.quantization.mode != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    model = get_peft_model(model, lora_config(config))
    model.print_trainable_parameters()

    dtype = config.quantization.compute_dtype
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        optim=config.optimizer,
        neftune_noise_alpha=config.neftune_noise_alpha,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs=checkpointing,
        bf16=cuda and dtype == "bfloat16",
        fp16=cuda and dtype == "float16",
        use_cpu=not cuda,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=seed,
        full_determinism=os.environ.get(DETERMINISTIC_ENV) == "1",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to=[],
    )
    monitor = Monitor(end)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,  # a list is a map-style dataset
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[monitor, Recorder(out), *(callbacks or [])],
    )
    write_record(out, seed, seed_source)  # after Trainer(): it applies the determinism settings
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    if checkpoint:
        print(f"resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)

    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "stopped_by_time_budget": monitor.stopped_by_budget,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "tokens_per_s": round(monitor.tokens_per_second(trainer.state), 1),
        "peak_memory_gib": round(peak_memory_gib(), 3),
        "adapter": str(adapter),
        "seed": seed,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("training summary: " + json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config (YAML)")
    args = parser.parse_args()
    try:
        train(load_config(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
