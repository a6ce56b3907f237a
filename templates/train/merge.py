"""Merge the trained LoRA adapter into the base model, QLoRA-aware, and check the result.

    python merge.py --config config.yaml

The adapter was trained against the 4-bit base, so it is merged into that same base: a fresh copy
is loaded in the training quantization (train.py's own loader), dequantized to float, the adapter
is loaded on it and merged. Merging into the original full-precision weights instead would be off
by the quantization error; merging on the 4-bit layers is off by their re-quantization. The merged
model is saved in Hugging Face format (safetensors, tokenizer, generation config) in
merge.output_dir, with prompt_template.json: the config's prompt_template, which the server wraps
every prompt in, so the model is asked the way it was trained.
Then, on a few prompts, its logits are compared with those of the adapter on the 4-bit base, and
the largest difference is printed. Exit codes: 0 merged and within tolerance, 1 over tolerance
(the merged model is kept for inspection), 2 a bad config or a missing adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from config import ConfigError, TrainConfig, load_config
from peft import PeftModel
from train import DTYPES, load_base
from transformers import AutoTokenizer

TEMPLATE_FILE = "prompt_template.json"  # the server (settings.py) reads the same name


class MergeMismatch(RuntimeError):
    """The merged model's logits differ from the adapter model's by more than the tolerance."""


def pick_device(config: TrainConfig) -> str:
    wanted = config.merge.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("merge.device is cuda but no GPU is visible")
    gpu = wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available())
    return "cuda:0" if gpu else "cpu"


@torch.no_grad()
def logits_for(model: Any, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    model.eval()
    return [model(**batch).logits.float().cpu() for batch in batches]


def merge(config: TrainConfig) -> float:
    """Merge, save, check; returns the largest absolute logit difference."""
    adapter = Path(config.output_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"no trained adapter in {adapter}: run train.py first")
    device = pick_device(config)
    dtype = DTYPES[config.merge.dtype]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    batches = [
        {k: v.to(device) for k, v in tokenizer(p, return_tensors="pt").items()}
        for p in config.merge.check_prompts
    ]

    base = load_base(config, device)
    if config.quantization.mode != "none":
        base = base.dequantize()
    merged = PeftModel.from_pretrained(base.to(dtype), adapter).merge_and_unload()
    merged_logits = logits_for(merged, batches)
    out = Path(config.merge.output_dir)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / TEMPLATE_FILE).write_text(json.dumps({"prompt_template": config.prompt_template}) + "\n")
    print(f"saved the merged model ({config.merge.dtype}) to {out}")
    del merged, base  # the reference model below then fits beside nothing else on the GPU

    reference = PeftModel.from_pretrained(load_base(config, device), adapter)
    reference_logits = logits_for(reference, batches)
    largest = max(
        (m - r).abs().max().item() for m, r in zip(merged_logits, reference_logits, strict=True)
    )
    print(
        f"merge check on {len(batches)} prompts: largest logit difference {largest:.3g} "
        f"(tolerance {config.merge.tolerance:g})"
    )
    if not largest <= config.merge.tolerance:  # written so that NaN fails too
        raise MergeMismatch(
            f"the merged model's logits differ from the adapter model's by {largest:.3g}, over the "
            f"tolerance {config.merge.tolerance:g}: the merged weights in {out} are not trustworthy"
        )
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config (YAML)")
    args = parser.parse_args()
    try:
        merge(load_config(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MergeMismatch as exc:
        print(f"MERGE CHECK FAILED: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
