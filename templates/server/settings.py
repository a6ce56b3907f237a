"""The submission server's settings: the environment main.py documents, validated on load
(Settings.from_env), and the prompt template the model was trained with (read_template)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# Written beside the merged model by merge.py: the prompt template the model was trained with.
TEMPLATE_FILE = "prompt_template.json"


@dataclass(frozen=True)
class Settings:
    model_path: str
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    batch_window_ms: float = 5.0
    max_context: int | None = None
    prefix_cache_mb: float = 1024.0
    prefill_chunk: int = 512

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        if not env.get("MODEL_PATH"):
            raise ValueError("MODEL_PATH is not set: point it at the merged model's folder")
        settings = cls(
            model_path=env["MODEL_PATH"],
            device=env.get("DEVICE", "auto"),
            dtype=env.get("DTYPE", "auto"),
            load_in_4bit=env.get("LOAD_IN_4BIT", "0").lower() in ("1", "true", "yes"),
            max_batch_size=int(env.get("MAX_BATCH_SIZE", "32")),
            max_batch_tokens=int(env.get("MAX_BATCH_TOKENS", "8192")),
            batch_window_ms=float(env.get("BATCH_WINDOW_MS", "5")),
            max_context=int(env["MAX_CONTEXT"]) if env.get("MAX_CONTEXT") else None,
            prefix_cache_mb=float(env.get("PREFIX_CACHE_MB", "1024")),
            prefill_chunk=int(env.get("PREFILL_CHUNK", "512")),
        )
        if settings.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"DTYPE={settings.dtype!r}: use auto, bfloat16, float16 or float32")
        if settings.max_batch_size < 1 or settings.max_batch_tokens < 1:
            raise ValueError("MAX_BATCH_SIZE and MAX_BATCH_TOKENS must be positive")
        if not settings.prefix_cache_mb >= 0:  # NaN too
            raise ValueError("PREFIX_CACHE_MB must be 0 (no prefix cache) or more")
        if settings.prefill_chunk < 0:
            raise ValueError("PREFILL_CHUNK must be 0 (prompts read whole) or more")
        return settings


def read_template(model_path: Path) -> str:
    """The template training wrapped every prompt in; a model without the file was trained on
    prompts as they are. A broken file stops the server: serving unwrapped prompts to a model
    trained on wrapped ones would lose every answer without a word."""
    path = model_path / TEMPLATE_FILE
    if not path.exists():
        return "{prompt}"
    try:
        template = json.loads(path.read_text())["prompt_template"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a prompt template file: {exc!r}") from None
    if not isinstance(template, str) or template.count("{prompt}") != 1:
        raise ValueError(f"{path}: prompt_template must contain {{prompt}} exactly once")
    return template
