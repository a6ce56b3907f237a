"""Peak GPU memory of a QLoRA run, estimated from the model's config.json and the training config.

    python memory.py --config config.yaml --model-config config.json

train.py runs this before downloading any weights and refuses a config that cannot fit the track's
GPU. The estimate mirrors what train.py does: 4-bit linear layers; embeddings, lm_head and norms
upcast to float32 (peft's prepare_model_for_kbit_training); LoRA weights, gradients and optimizer
states in float32; activations under autocast in the compute dtype, with a float32 residual stream
(the upcast embeddings feed it); float32 logits for the loss; a fixed CUDA context.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ConfigError, TrainConfig, load_config

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.75  # driver context + cuBLAS workspaces; invisible to torch's allocator
FRAGMENTATION = 0.10  # the caching allocator holds ~10% more than it hands out
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
OPTIMIZER_STATE_BYTES = {  # Adam's two moments per trainable parameter
    "adamw_torch": 8,
    "paged_adamw_32bit": 8,
    "paged_adamw_8bit": 2,
    "adamw_8bit": 2,
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
OUTPUT = "lm_head"  # a target outside the decoder layers: adapted once, not per layer
TARGETS = {"attention": ATTENTION, "mlp": MLP, "all-linear": ATTENTION + MLP}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], origin: str = "model config") -> ModelShape:
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        missing = [k for k in (*keys, "vocab_size") if not isinstance(config.get(k), int)]
        if missing:
            raise ConfigError(f"{origin} lacks {', '.join(missing)}: not a Llama/Mistral config")
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return cls(
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            head_dim=config.get("head_dim") or hidden // heads,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear layer in one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]  # bytes
    gpu_gib: float

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_gib * GIB

    def table(self) -> str:
        lines = [f"  {name:<28} {value / GIB:7.2f} GiB" for name, value in self.parts.items()]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        total = f"{self.total / GIB:7.2f} GiB of {self.gpu_gib:.0f} GiB: {verdict}"
        lines.append(f"  {'total':<28} {total}")
        return "estimated peak GPU memory:\n" + "\n".join(lines)


def target_names(config: TrainConfig) -> tuple[str, ...]:
    targets = config.lora.target_modules
    return TARGETS[targets] if isinstance(targets, str) else tuple(targets)


def lora_parameters(shape: ModelShape, config: TrainConfig) -> int:
    linears = shape.linears()
    targets = target_names(config)
    unknown = [t for t in targets if t not in linears and t != OUTPUT]
    if unknown:
        raise ConfigError(
            f"lora.target_modules: {unknown} are not linear layers of a Llama/Mistral model "
            f"({', '.join([*linears, OUTPUT])})"
        )
    per_layer = sum(config.lora.r * sum(linears[t]) for t in targets if t != OUTPUT)
    output = config.lora.r * (shape.hidden + shape.vocab) if OUTPUT in targets else 0
    return per_layer * shape.layers + output


def _layer_activation_bytes(shape: ModelShape, config: TrainConfig) -> int:
    """Bytes one decoder layer keeps for backward, per token, under autocast."""
    h, i, a = shape.hidden, shape.intermediate, shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    c = DTYPE_BYTES[config.quantization.compute_dtype]
    norms = 2 * (4 * h + 4 * h)  # float32 input and output of both RMSNorms
    attention = c * (h + a + 2 * kv + a + kv + a) + 4 * shape.heads  # in, qkv, rope'd q/k, out, lse
    mlp = c * (h + 4 * i)  # input, gate, up, silu(gate), gate*up
    lora = 0
    if config.lora.dropout > 0:  # peft keeps each target's dropped-out input and its mask
        linears = shape.linears()
        lora = sum((c + 1) * linears[t][0] for t in target_names(config) if t != OUTPUT)
    return norms + attention + mlp + lora


def estimate(shape: ModelShape, config: TrainConfig) -> Estimate:
    c = DTYPE_BYTES[config.quantization.compute_dtype]
    quantized = config.quantization.mode != "none"
    linear_params = sum(i * o for i, o in shape.linears().values()) * shape.layers
    if quantized:
        # 4 bits per weight plus one absmax per 64 weights: float32, or 8-bit with double quant.
        constants = (1 + 4 / 256) / 64 if config.quantization.double_quant else 4 / 64
        linear_bytes = linear_params * (0.5 + constants)
    else:
        linear_bytes = linear_params * c
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)
    other_bytes = 4 if quantized else c
    lora = lora_parameters(shape, config)
    tokens = config.micro_batch_size * config.max_seq_len
    layer = _layer_activation_bytes(shape, config) * tokens
    if config.attn_implementation == "eager":  # scores and probabilities, materialised
        layer += config.micro_batch_size * shape.heads * config.max_seq_len**2 * 2 * c
    if config.gradient_checkpointing:
        # every layer's float32 input is kept; one layer is recomputed with its gradients alive
        activations = shape.layers * tokens * shape.hidden * 4 + 2 * layer
    else:
        activations = shape.layers * layer
    biggest = max(i * o for i, o in shape.linears().values())
    parts = {
        "4-bit weights" if quantized else "frozen weights": linear_bytes,
        "embeddings, head, norms": (embeddings + (2 * shape.layers + 1) * shape.hidden)
        * other_bytes,
        f"LoRA ({lora / 1e6:.1f}M params + Adam)": lora
        * (4 + 4 + OPTIMIZER_STATE_BYTES[config.optimizer]),
        "activations": activations,
        # compute-dtype logits, their float32 copy, log-softmax and its gradient
        "logits": tokens * shape.vocab * (c + 4 + 4 + 4),
        # a dequantized weight and the autocast copy of lm_head, alive in backward
        "workspace": (biggest + shape.vocab * shape.hidden) * c,
    }
    parts["allocator fragmentation"] = FRAGMENTATION * sum(parts.values())
    parts["CUDA context"] = CUDA_CONTEXT_GIB * GIB
    return Estimate(parts, config.gpu_gib)


def check(shape: ModelShape, config: TrainConfig) -> Estimate:
    """The estimate; `ConfigError` with the breakdown and what to change when it does not fit."""
    result = estimate(shape, config)
    if not result.fits:
        raise ConfigError(
            f"this config needs about {result.total / GIB:.1f} GiB but track {config.track} has "
            f"{config.gpu_gib:.0f} GiB; lower micro_batch_size, max_seq_len or lora.r, or turn on "
            f"gradient_checkpointing.\n{result.table()}"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config (YAML)")
    parser.add_argument("--model-config", required=True, help="the base model's config.json")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        path = Path(args.model_config)
        shape = ModelShape.from_config(json.loads(path.read_text()), origin=str(path))
        print(check(shape, config).table())
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
