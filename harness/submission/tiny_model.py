"""A tiny random Llama-family causal LM and a locally trained tokenizer, for tests and the demo.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on a built-in corpus, the weights
are random. A random model tends to emit its end-of-sequence token at once, so callers that need
text should ask for `min_new_tokens`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

ARCHITECTURES = ("llama", "mistral")
CONTEXT_LENGTH = 256
VOCAB_SIZE = 512
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}

_WORDS = (  # noqa: SIM905 (a sentence reads better than a list of words)
    "the capital of france is paris and the capital of italy is rome . a model answers questions "
    "about science , history , math and language . question : what is two plus three ? answer : "
    "five . which planet is largest ? jupiter . the quick brown fox jumps over the lazy dog . "
    "A B C D yes no true false 0 1 2 3 4 5 6 7 8 9 ( ) [ ] { } = + - * / ! ? : ; ' \" \n"
).split(" ")


def _corpus(lines: int = 2000) -> list[str]:
    """Deterministic pseudo-sentences covering the words above in many orders."""
    cycle = itertools.cycle(_WORDS)
    return [" ".join(next(cycle) for _ in range(3 + i % 17)) for i in range(lines)]


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=CONTEXT_LENGTH, **SPECIAL_TOKENS
    )


def write_tiny_model(out_dir: Path | str, *, arch: str = "llama", seed: int = 0) -> Path:
    """Write a random `arch` model (a few hundred kB) and its tokenizer to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    shape: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": CONTEXT_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    if arch == "llama":
        model: Any = LlamaForCausalLM(LlamaConfig(**shape))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **shape))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # safetensors writes 0600: a container's non-root user (a reproduced training run mounting
    # this folder) could not read the weights.
    for path in [out, *out.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    return out


def write_tiny_dataset(path: Path | str, rows: int = 40) -> Path:
    """An alpaca-format JSONL of simple arithmetic, for smoke-training the tiny model."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        {"instruction": f"What is {i} plus {i + 1}?", "input": "", "output": f"{2 * i + 1}."}
        for i in range(rows)
    ]
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out
