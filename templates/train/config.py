"""The one typed training config, shared by train.py, merge.py, data.py and memory.py.

Loaded from YAML and validated on load: a bad key or value stops the run before anything is
downloaded, with an error that names the key. Axolotl's names for the common keys are accepted
(lora_r, lora_alpha, lora_dropout, lora_target_modules, sequence_len, num_epochs, revision_of_model,
and `path`/`type` in a dataset entry), since many competitors come from axolotl.

    python config.py config.yaml     # validate a config and print it with every default filled in
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TRACK_GPU_GIB = {"4090": 24.0, "A100": 40.0}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
FORMATS = ("alpaca", "dolly", "oasst", "sharegpt", "lima", "prompt-completion")
Dtype = Literal["bfloat16", "float16", "float32"]

# Axolotl's flat names -> (section, our name); a section of None means a top-level rename.
AXOLOTL_ALIASES: dict[str, tuple[str | None, str]] = {
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "lora_target_modules": ("lora", "target_modules"),
    "sequence_len": (None, "max_seq_len"),
    "num_epochs": (None, "epochs"),
    "revision_of_model": (None, "revision"),
}


class ConfigError(ValueError):
    """A config that cannot be used; the message names every offending key."""


class Strict(BaseModel):
    # A misspelt key must fail loudly rather than silently train with a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fields(Strict):
    """Which columns of a row hold what, for rows in no known format (OpenOrca's
    system_prompt/question/response, CNN/DailyMail's article/highlights, ...)."""

    prompt: str | list[str] = Field(description="a column, or columns joined by blank lines")
    completion: str
    system: str | None = None


class DatasetSpec(Strict):
    source: str = Field(
        description="local jsonl/json/parquet file, a local data set folder (hub layout), "
        "or hub `owner/name@revision`"
    )
    format: Literal[FORMATS] | None = None  # type: ignore[valid-type]
    fields: Fields | None = None
    name: str | None = Field(default=None, description="the data set's config (gsm8k: main)")
    split: str = "train"
    weight: float | None = Field(default=None, gt=0)
    max_samples: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _axolotl_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = _rename(dict(data), {"path": "source", "type": "format"})
        return data

    @model_validator(mode="after")
    def _one_way_each(self) -> DatasetSpec:
        if self.weight is not None and self.max_samples is not None:
            raise ValueError("give `weight` or `max_samples`, not both")
        if (self.format is None) == (self.fields is None):
            raise ValueError("give `format` or a `fields` map, one of them")
        return self

    @property
    def on_hub(self) -> bool:
        return "@" in self.source and not Path(self.source).exists()


class Curation(Strict):
    dedup: bool = True
    near_dup_threshold: float | None = Field(default=0.8, gt=0, le=1)
    decontaminate: list[str] = Field(
        default=[], description="instance packs and raw test splits (files or folders)"
    )
    contamination_ngram: int = Field(default=13, ge=4)


class Quantization(Strict):
    mode: Literal["nf4", "fp4", "none"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"


class Lora(Strict):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: Literal["attention", "mlp", "all-linear"] | list[str] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("an explicit list of target modules must not be empty")
        return value


class Merge(Strict):
    output_dir: str = "out/merged"
    dtype: Dtype = "bfloat16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The check's tolerance on logits; bfloat16 weights alone round logits by ~0.1 on a 7B model.
    tolerance: float = Field(default=0.5, gt=0)
    check_prompts: list[str] = Field(
        default=["The capital of France is", "Question: what is two plus three?\nAnswer:"],
        min_length=1,
    )


class TrainConfig(Strict):
    track: Literal["4090", "A100"]
    base_model: str
    revision: str | None = None
    datasets: list[DatasetSpec] = Field(min_length=1)
    prompt_template: str = "{prompt}"
    curation: Curation = Curation()
    quantization: Quantization = Quantization()
    lora: Lora = Lora()
    neftune_noise_alpha: float | None = Field(default=5.0, gt=0)
    optimizer: Literal["adamw_torch", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"] = (
        "adamw_torch"
    )
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    micro_batch_size: int = Field(default=1, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_seq_len: int = Field(default=2048, ge=16)
    packing: bool = False
    gradient_checkpointing: bool = True
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    seed: int | None = None  # None: drawn from the OS and logged (train.py)
    time_budget: float | None = Field(default=None, description="seconds; YAML takes '21h30m'")
    save_steps: int = Field(default=100, gt=0)
    logging_steps: int = Field(default=10, gt=0)
    output_dir: str = "out/train"
    merge: Merge = Merge()

    @model_validator(mode="before")
    @classmethod
    def _axolotl_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, (section, new) in AXOLOTL_ALIASES.items():
            if old not in data:
                continue
            if section is None:
                data = _rename(data, {old: new})
                continue
            nested = dict(data.get(section) or {})
            if new in nested:
                raise ValueError(f"`{old}` and `{section}.{new}` both given; keep one")
            nested[new] = data.pop(old)
            data[section] = nested
        return data

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt_slot(cls, value: str) -> str:
        if value.count("{prompt}") != 1:
            raise ValueError("must contain the placeholder {prompt} exactly once")
        return value

    @field_validator("datasets")
    @classmethod
    def _distinct_sources(cls, value: list[DatasetSpec]) -> list[DatasetSpec]:
        sources = [spec.source for spec in value]
        if len(set(sources)) != len(sources):
            raise ValueError("a source is listed twice; use `weight` to repeat a dataset")
        return value

    @model_validator(mode="after")
    def _pinned_base(self) -> TrainConfig:
        if not is_local(self.base_model):
            if not HUB_ID.match(self.base_model):
                raise ValueError(
                    f"base_model {self.base_model!r} is neither a local folder nor a hub id"
                )
            if not self.revision:
                raise ValueError(
                    "base_model is a hub id: pin `revision` to a commit sha so the run reproduces"
                )
        return self

    @property
    def gpu_gib(self) -> float:
        return TRACK_GPU_GIB[self.track]


def apply_template(template: str, prompt: str, response: str) -> tuple[str, str]:
    """The text the model reads and the completion it learns. The server wraps HELM's prompt in
    the same template (merge.py leaves it beside the merged model). HELM ends a prompt with its
    output prefix stripped ("...Answer:") and shows in-context answers after a space ("Answer: B"),
    so a completion that follows a prompt ending mid-line starts with a space."""
    text = template.replace("{prompt}", prompt)
    if text and not text[-1].isspace() and response and not response[0].isspace():
        response = " " + response
    return text, response


def is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists()


def parse_duration(text: str) -> float:
    """'21h30m', '90m', '45s' or a bare number of seconds."""
    cleaned = text.strip().replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        pass
    match = DURATION.match(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"{text!r} is not a duration like '21h30m', '90m' or '3600'")
    hours, minutes, seconds = (float(match[k] or 0) for k in ("h", "m", "s"))
    return hours * 3600 + minutes * 60 + seconds


def _rename(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    for old, new in names.items():
        if old in data:
            if new in data:
                raise ValueError(f"`{old}` and `{new}` both given; keep one")
            data[new] = data.pop(old)
    return data


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names valid at `loc` (for 'did you mean' hints on misspelt keys)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields) + [k for k, (s, _) in AXOLOTL_ALIASES.items() if s is None]


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(TrainConfig, loc), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        return f"{key}: unknown key{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
    return f"{key}: {message}{got}"


def from_dict(data: Any, origin: str = "config") -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys to values")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML config; `ConfigError` names every bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return from_dict(data, origin=str(path))


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python config.py config.yaml", file=sys.stderr)
        sys.exit(2)
    try:
        config = load_config(sys.argv[1])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print(yaml.safe_dump(config.model_dump(), sort_keys=False))


if __name__ == "__main__":
    main()
