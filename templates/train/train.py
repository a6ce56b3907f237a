"""QLoRA fine-tuning of the base model on the curated data mixture, within a time budget.

    python train.py --config config.yaml            # a new run, or resume this config's run
    python train.py --config config.yaml --fresh    # discard output_dir's run and start over
    python train.py --config config.yaml --ignore-memory-estimate   # a warning, not a refusal

Steps: validate the config; fetch only the base model's config.json and refuse a config whose
estimated peak memory does not fit the track's GPU (memory.py); curate the data (data.py); load the
base in 4 bits, add LoRA adapters and train with the loss on response tokens only, NEFTune, a
progress bar and tokens/s + peak memory in the logs. The adapter ends up in output_dir/adapter.

A run knows what it is: output_dir/run_started.json records when it started and a sha256 of the
config and the data. A re-run of the same config resumes from the latest checkpoint (saved every
save_steps) within the same time budget; a run of another config or data, a finished run, or one
whose budget is spent is refused with the fix (`--fresh`, or a longer time_budget), so a second run
never trains one step silently. The start prints the budget left and whether it resumes.

With a time budget, the step time is measured after a few steps and the learning-rate schedule
(cosine, linear) is resized to end as the budget ends: the run stops at the schedule's end, the
adapter is saved and the script exits 0. Without one, the epochs (or max_steps) set the schedule.

The run leaves its record in output_dir, for the submission's training/ folder and for
`harness reproduce`: metrics.jsonl (per logged step: loss, learning rate, tokens seen, grad norm,
wall time) and run_record.json (the seed, the data's hashes, library versions, the device and the
determinism settings). The seed is $TRAIN_SEED if set (a reproduction sets it), else the config's,
else a resumed run's own, else drawn from the OS; TRAIN_DETERMINISTIC=1 turns on torch's
deterministic algorithms.
Exit codes: 0 done (or stopped by the budget), 2 a bad config, one that does not fit, or a run
that cannot go on in output_dir.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import data
import memory
import torch
from config import ConfigError, TrainConfig, apply_template, load_config
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
    get_scheduler,
)
from transformers.trainer_utils import get_last_checkpoint

MARKER = "run_started.json"  # what the run in output_dir is: its start and its fingerprint
# Settings that change nothing in the trained adapter: a run may resume with other values.
NOT_FINGERPRINTED = {"time_budget", "save_steps", "logging_steps", "output_dir", "merge"}
MEASURED_STEPS = 3  # optimizer steps timed after the first one before the schedule is sized
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
            # bitsandbytes.nn imports Linear4bit without listing it in an __all__
            if isinstance(module, bnb.nn.Linear4bit):  # type: ignore[attr-defined]
                module.support_avx512bf16_for_cpu = False
    return model


def load_tokenizer(config: TrainConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, revision=config.revision)
    if tokenizer.pad_token is None:  # Llama/Mistral ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def tokenize(example: data.Example, config: TrainConfig, tokenizer: Any) -> dict[str, list[int]]:
    """The prompt's tokens are exactly those the server feeds the model for the same request (the
    tokenizer's special tokens, BOS for Mistral, then the wrapped prompt alone), so the label mask
    falls where generation starts. The completion's tokens are cut from the tokenized whole text
    when it extends the prompt's tokens ("Answer:" + " B" as one word piece, not a lone space)."""
    text, completion = apply_template(config.prompt_template, example.prompt, example.response)
    prompt = tokenizer(text)["input_ids"]
    whole = tokenizer(text + completion)["input_ids"]
    if whole[: len(prompt)] == prompt:
        response = whole[len(prompt) :]
    else:
        response = tokenizer(completion, add_special_tokens=False)["input_ids"]
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
    """Adds tokens/s and peak memory to the logs. With a deadline, sizes the learning-rate
    schedule to end with the budget from the measured step time, and stops at its end (or at the
    deadline, whichever comes first)."""

    def __init__(self, deadline: float | None, config: TrainConfig) -> None:
        self.deadline = deadline
        self.config = config
        self.stopped_by_budget = False
        self.scheduled_steps: int | None = None  # the schedule's length once sized to the budget
        self.last_lr: float | None = None
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
        self,
        args: Any,
        state: TrainerState,
        control: TrainerControl,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        if state.global_step == self.first_step:  # the first step pays one-off warm-up costs
            self.started = time.monotonic()
            self.tokens_at_start = state.num_input_tokens_seen
        if self.deadline is None:
            return
        timed = state.global_step - self.first_step
        if timed >= MEASURED_STEPS and self.config.lr_scheduler in ("cosine", "linear"):
            self.fit_schedule(state, lr_scheduler, (time.monotonic() - self.started) / timed)
        if lr_scheduler is not None:
            self.last_lr = float(lr_scheduler.get_last_lr()[0])
        ended = self.scheduled_steps is not None and state.global_step >= self.scheduled_steps
        if ended or time.time() >= self.deadline:
            self.stopped_by_budget = True
            control.should_training_stop = True

    def fit_schedule(self, state: TrainerState, lr_scheduler: Any, step_s: float) -> None:
        """Shorten the schedule to the steps the budget left still holds at the measured pace
        (re-measured every step, so it converges); a budget longer than the epochs changes
        nothing."""
        assert self.deadline is not None
        fits = state.global_step + int((self.deadline - time.time()) / step_s)
        steps = min(fits, state.max_steps)
        if steps == (self.scheduled_steps or state.max_steps) or lr_scheduler is None:
            return
        if self.scheduled_steps is None:
            print(
                f"schedule sized to the time budget: {steps} optimizer steps instead of "
                f"{state.max_steps}, at {step_s:.3g} s a step; the learning rate ends with it"
            )
        self.scheduled_steps = steps
        # A scheduler of the same kind on a throwaway optimizer lends its shape for the new length.
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        resized = get_scheduler(
            self.config.lr_scheduler,
            probe,
            num_warmup_steps=self.config.warmup_steps,
            num_training_steps=steps,
        )
        lr_scheduler.lr_lambdas = resized.lr_lambdas * len(lr_scheduler.lr_lambdas)


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
    versions: dict[str, str | None] = {}
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


def fingerprint(config: TrainConfig) -> str:
    """A sha256 of what the adapter depends on: the config (less NOT_FINGERPRINTED) and the bytes
    of every local data file, data set folder and decontamination source (a hub data set is
    pinned by its revision in the config)."""
    digest = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude=NOT_FINGERPRINTED)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    local = [spec.source for spec in config.datasets if not spec.on_hub]
    for source in [*local, *config.curation.decontaminate]:
        path = Path(source).expanduser()
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                with file.open("rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _duration(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m"


def start_run(config: TrainConfig, out: Path, *, fresh: bool) -> tuple[float | None, str | None]:
    """The budget's deadline and the checkpoint to resume from, after checking that output_dir's
    run is this one. `fresh` discards the run found there (checkpoints, adapter, marker)."""
    marker = out / MARKER
    if fresh:
        for old in [*out.glob("checkpoint-*"), out / "adapter"]:
            shutil.rmtree(old, ignore_errors=True)
        for name in (MARKER, "train_summary.json", "run_record.json", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = get_last_checkpoint(str(out))
    this = fingerprint(config)
    fix = "pass --fresh to discard it and start over, or set output_dir to a new folder"
    if marker.exists():
        run = json.loads(marker.read_text())
        if run.get("fingerprint") != this:
            raise ConfigError(
                f"{out} holds a run of another config or data (started {_when(run['started'])}); "
                + fix
            )
        if run.get("finished"):
            raise ConfigError(
                f"{out} holds a finished run of this config (started {_when(run['started'])}; "
                f"its adapter is in {out / 'adapter'}): run merge.py, or --fresh to train again"
            )
    elif checkpoint is not None or (out / "adapter").exists():
        raise ConfigError(f"{out} holds checkpoints of a run with no record of its config; " + fix)
    else:
        run = {"started": time.time(), "fingerprint": this, "finished": False}
        marker.write_text(json.dumps(run) + "\n")
    resuming = f"resuming from {checkpoint}" if checkpoint else "a new run"
    if config.time_budget is None:
        print(f"run: {resuming}, no time budget")
        return None, checkpoint
    end = float(run["started"]) + config.time_budget
    if time.time() >= end:
        raise ConfigError(
            f"the time budget of the run in {out} ended at {_when(end)}: raise time_budget to go "
            f"on from {checkpoint or 'its start'}, or pass --fresh to start a new budget"
        )
    print(
        f"run: {resuming}, {_duration(end - time.time())} left of the "
        f"{_duration(config.time_budget)} budget (started {_when(run['started'])})"
    )
    return end, checkpoint


def finish_run(out: Path) -> None:
    marker = out / MARKER
    run = json.loads(marker.read_text())
    marker.write_text(json.dumps({**run, "finished": True}) + "\n")


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


def check_memory(config: TrainConfig, *, override: bool = False) -> memory.Estimate:
    """Only config.json is fetched here: a config that cannot fit fails before any weights.
    `override` turns the refusal into a warning, for an estimate known to be too high."""
    try:
        model_config = AutoConfig.from_pretrained(config.base_model, revision=config.revision)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config of base_model {config.base_model!r}: {exc}"
        ) from None
    shape = memory.ModelShape.from_config(model_config.to_dict(), origin=config.base_model)
    try:
        return memory.check(shape, config)
    except ConfigError as exc:
        if not override:
            raise ConfigError(
                f"{exc}\n(an estimate you know to be wrong: --ignore-memory-estimate)"
            ) from None
        print(
            f"warning: {exc}\ngoing on anyway (--ignore-memory-estimate): expect CUDA out of "
            "memory if the estimate was right",
            file=sys.stderr,
        )
        return memory.estimate(shape, config)


def train(
    config: TrainConfig,
    callbacks: list[TrainerCallback] | None = None,
    *,
    fresh: bool = False,
    ignore_memory_estimate: bool = False,
) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to output_dir."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    out = Path(config.output_dir)
    print(check_memory(config, override=ignore_memory_estimate).table())
    end, checkpoint = start_run(config, out, fresh=fresh)
    seed, seed_source = resolve_seed(config, out)
    config = config.model_copy(update={"seed": seed})  # the data mixture draws with it too
    print(f"seed {seed} ({seed_source})")

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
    monitor = Monitor(end, config)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,  # a list is a map-style dataset
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[monitor, Recorder(out), *(callbacks or [])],
    )
    write_record(out, seed, seed_source)  # after Trainer(): it applies the determinism settings
    trainer.train(resume_from_checkpoint=checkpoint)

    adapter = out / "adapter"
    peft_model: Any = trainer.model  # the PeftModel; Trainer types it as any Module
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "stopped_by_time_budget": monitor.stopped_by_budget,
        "scheduled_steps": monitor.scheduled_steps,
        "final_learning_rate": monitor.last_lr,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "tokens_per_s": round(monitor.tokens_per_second(trainer.state), 1),
        "peak_memory_gib": round(peak_memory_gib(), 3),
        "adapter": str(adapter),
        "seed": seed,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finish_run(out)
    print("training summary: " + json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config (YAML)")
    parser.add_argument(
        "--fresh", action="store_true", help="discard the run in output_dir and start over"
    )
    parser.add_argument(
        "--ignore-memory-estimate",
        action="store_true",
        help="train even when memory.py estimates the config does not fit the track's GPU",
    )
    args = parser.parse_args()
    try:
        train(
            load_config(args.config),
            fresh=args.fresh,
            ignore_memory_estimate=args.ignore_memory_estimate,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
