"""Training data: load, convert to prompt/response, curate, mix. Used by train.py.

    python data.py --config config.yaml [--tokenizer PATH]   # preview: counts + curated.jsonl

Order of the pipeline, and why: every dataset is converted to one prompt/response form; empty and
over-long examples are dropped; exact then near duplicates are removed across all datasets (the
first occurrence wins, so list the dataset you trust most first); examples sharing a long n-gram
with an evaluation prompt are dropped; only then is the seeded mixture drawn, so that upsampling a
dataset (weight > 1) is not undone by deduplication. Every drop is counted per dataset, printed and
saved as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from config import ConfigError, DatasetSpec, TrainConfig, apply_template, load_config

USER_ROLES = {"human", "user", "prompter"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model"}
GUANACO_TURN = re.compile(r"###\s*(Human|Assistant):", re.IGNORECASE)
WORD = re.compile(r"\w+")
SHINGLE = 3  # words per shingle: one changed word in a 40-word text keeps Jaccard near 0.85
BANDS, ROWS = 16, 8  # LSH over 128 MinHash values; pairs above ~0.7 Jaccard become candidates


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    source: str


# --- loading --------------------------------------------------------------------------------------


def read_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Rows of a local jsonl/json/parquet file, or of a hub dataset pinned as id@revision."""
    if not spec.on_hub:
        return _read_local(Path(spec.source).expanduser())
    name, _, revision = spec.source.partition("@")
    import datasets

    try:
        table = datasets.load_dataset(name, revision=revision, split=spec.split)
    except Exception as exc:  # datasets raises many unrelated types when offline or misnamed
        raise ConfigError(
            f"cannot load hub dataset {spec.source!r} (split {spec.split!r}): {exc}"
        ) from None
    return [dict(row) for row in table]


def _read_local(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"dataset file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        return rows
    if path.suffix == ".json":
        loaded = json.loads(text)
        if isinstance(loaded, dict) and len(loaded) == 1:  # {"train": [...]} style wrappers
            loaded = next(iter(loaded.values()))
        if not isinstance(loaded, list):
            raise ConfigError(f"{path}: expected a JSON list of records")
        return loaded
    raise ConfigError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


# --- conversion -----------------------------------------------------------------------------------


def _field(row: dict[str, Any], *names: str) -> str:
    for name in names:
        if name in row:
            value = row[name]
            return "" if value is None else str(value)
    raise KeyError(" or ".join(repr(n) for n in names))


def _join(*parts: str) -> str:
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def _from_turns(turns: list[tuple[str, str]]) -> tuple[str, str]:
    """The last assistant turn is the response; earlier turns, labelled, form the prompt."""
    while turns and turns[-1][0] != "assistant":
        turns = turns[:-1]
    if not turns:
        return "", ""
    history, (_, response) = turns[:-1], turns[-1]
    if len(history) == 1:
        return history[0][1], response
    labels = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{labels[role]}: {text}" for role, text in history), response


def _role(name: str) -> str:
    name = name.lower()
    if name in USER_ROLES:
        return "user"
    if name in ASSISTANT_ROLES:
        return "assistant"
    return "system"


def _conversation(row: dict[str, Any]) -> tuple[str, str]:
    """ShareGPT (`conversations` of from/value), OpenAI/oasst (`messages` of role/content), or
    guanaco-style `text` with '### Human:' / '### Assistant:' markers."""
    if "conversations" in row or "messages" in row:
        messages = row.get("conversations") or row.get("messages") or []
        turns = [
            (
                _role(str(m.get("from", m.get("role", "")))),
                str(m.get("value", m.get("content", ""))),
            )
            for m in messages
        ]
        return _from_turns([t for t in turns if t[0] != "system"])
    pieces = GUANACO_TURN.split(_field(row, "text"))
    roles = ("user" if p.lower() == "human" else "assistant" for p in pieces[1::2])
    return _from_turns(list(zip(roles, (p.strip() for p in pieces[2::2]), strict=True)))


def _lima(row: dict[str, Any]) -> tuple[str, str]:
    conversation = row["conversations"]
    roles = ("user" if i % 2 == 0 else "assistant" for i in range(len(conversation)))
    return _from_turns(list(zip(roles, map(str, conversation), strict=True)))


CONVERTERS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    # alpaca's `input` and dolly's `context` are optional extra context for the instruction
    "alpaca": lambda r: (
        _join(_field(r, "instruction"), str(r.get("input") or "")),
        _field(r, "output"),
    ),
    "dolly": lambda r: (
        _join(_field(r, "instruction"), str(r.get("context") or "")),
        _field(r, "response"),
    ),
    "oasst": _conversation,
    "sharegpt": _conversation,
    "lima": _lima,
    "prompt-completion": lambda r: (_field(r, "prompt"), _field(r, "completion")),
}


def convert(rows: Iterable[dict[str, Any]], fmt: str, source: str) -> list[Example]:
    converter = CONVERTERS[fmt]
    examples = []
    for number, row in enumerate(rows, 1):
        try:
            prompt, response = converter(row)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: record {number} does not look like format {fmt!r} "
                f"(missing or malformed {exc.args[0] if exc.args else exc})"
            ) from None
        examples.append(Example(prompt.strip(), response.strip(), source))
    return examples


# --- curation -------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash signatures with multiply-shift hashing (uint64 arithmetic wraps on purpose)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, BANDS * ROWS, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, BANDS * ROWS, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        tokens = words(text)
        grams = {
            " ".join(tokens[i : i + SHINGLE]) for i in range(max(1, len(tokens) - SHINGLE + 1))
        }
        x = np.fromiter((_hash64(g) for g in grams), dtype=np.uint64, count=len(grams))
        hashed = (self.a[:, None] * x[None, :] + self.b[:, None]) >> np.uint64(32)
        return np.asarray(hashed.min(axis=1))


class NearDuplicates:
    """Remembers kept examples; one whose estimated Jaccard similarity to a kept one is at least
    `threshold` is a near duplicate. LSH buckets keep this close to linear in the data size."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.hasher = MinHasher()
        self.buckets: dict[tuple[int, bytes], list[np.ndarray]] = {}

    def __call__(self, example: Example) -> bool:
        signature = self.hasher.signature(example.prompt + "\n" + example.response)
        keys = [
            (band, signature[band * ROWS : (band + 1) * ROWS].tobytes()) for band in range(BANDS)
        ]
        for key in keys:
            for other in self.buckets.get(key, ()):
                if np.mean(other == signature) >= self.threshold:
                    return True
        for key in keys:
            self.buckets.setdefault(key, []).append(signature)
        return False


class ExactDuplicates:
    """Remembers kept examples by their normalised text (case, spacing and punctuation ignored)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, example: Example) -> bool:
        normalised = " ".join(words(example.prompt)) + "\x00" + " ".join(words(example.response))
        key = hashlib.sha1(normalised.encode()).hexdigest()
        duplicate = key in self.seen
        self.seen.add(key)
        return duplicate


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _strings(item)


def eval_ngrams(path: Path, n: int) -> set[tuple[str, ...]]:
    """Every n-gram of words in every string (nested ones too, e.g. references) of a JSONL of
    evaluation records."""
    grams: set[tuple[str, ...]] = set()
    for text in _strings(_read_local(path)):
        tokens = words(text)
        grams.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def is_contaminated(example: Example, grams: set[tuple[str, ...]], n: int) -> bool:
    tokens = words(example.prompt + " " + example.response)
    return any(tuple(tokens[i : i + n]) in grams for i in range(len(tokens) - n + 1))


# --- the pipeline ---------------------------------------------------------------------------------


def _sample(examples: list[Example], spec: DatasetSpec, rng: random.Random) -> list[Example]:
    if spec.max_samples is not None:
        return rng.sample(examples, min(spec.max_samples, len(examples)))
    weight = 1.0 if spec.weight is None else spec.weight
    whole, fraction = divmod(weight, 1.0)
    return examples * int(whole) + rng.sample(examples, round(fraction * len(examples)))


def prepare(
    config: TrainConfig, too_long: Callable[[Example], bool]
) -> tuple[list[Example], dict[str, Any]]:
    """The curated, mixed and shuffled training examples, and the counts of everything dropped."""
    counts: dict[str, Counter[str]] = {}
    pools: dict[str, list[Example]] = {}
    for spec in config.datasets:
        examples = convert(read_rows(spec), spec.format, spec.source)
        count = counts.setdefault(spec.source, Counter(loaded=len(examples)))
        kept = []
        for example in examples:
            if not example.prompt or not example.response:
                count["empty"] += 1
            elif too_long(example):
                count["too_long"] += 1
            else:
                kept.append(example)
        pools[spec.source] = kept

    curation = config.curation
    filters: list[tuple[str, Callable[[Example], bool]]] = []
    if curation.dedup:
        filters.append(("exact_duplicate", ExactDuplicates()))
        if curation.near_dup_threshold is not None:
            filters.append(("near_duplicate", NearDuplicates(curation.near_dup_threshold)))
    if curation.eval_prompts is not None:
        n = curation.contamination_ngram
        grams = eval_ngrams(Path(curation.eval_prompts).expanduser(), n)
        filters.append(("contaminated", lambda e: is_contaminated(e, grams, n)))
    # Filter by filter across every dataset in the listed order: the first occurrence is kept.
    for reason, rejects in filters:
        for source, pool in pools.items():
            pools[source] = [e for e in pool if not rejects(e)]
            counts[source][reason] += len(pool) - len(pools[source])

    rng = random.Random(config.seed)
    mixture: list[Example] = []
    for spec in config.datasets:
        chosen = _sample(pools[spec.source], spec, rng)
        counts[spec.source].update(kept=len(pools[spec.source]), sampled=len(chosen))
        mixture.extend(chosen)
    rng.shuffle(mixture)
    total: Counter[str] = Counter()
    for count in counts.values():
        total.update(count)
    report = {"datasets": {s: dict(c) for s, c in counts.items()}, "total": dict(total)}
    return mixture, report


def print_report(report: dict[str, Any]) -> None:
    reasons = ("loaded", "empty", "too_long", "exact_duplicate", "near_duplicate", "contaminated")
    columns = (*reasons, "kept", "sampled")
    print("data: " + " | ".join(columns))
    for source, count in [*report["datasets"].items(), ("total", report["total"])]:
        print(f"  {source}: " + " | ".join(str(count.get(c, 0)) for c in columns))


def save(examples: Iterable[Example], report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out_dir / "curated.jsonl").open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")


def _token_length_check(config: TrainConfig, tokenizer: str | None) -> Callable[[Example], bool]:
    if tokenizer is None:
        return lambda _: False
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tokenizer, revision=config.revision)

    def too_long(example: Example) -> bool:
        text, completion = apply_template(config.prompt_template, example.prompt, example.response)
        return len(loaded(text + completion)["input_ids"]) + 1 > config.max_seq_len

    return too_long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--tokenizer", help="drop over-long examples by this tokenizer's count")
    parser.add_argument("--show", type=int, default=3, help="print the first N examples")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
        examples, report = prepare(config, _token_length_check(config, args.tokenizer))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print_report(report)
    for example in examples[: args.show]:
        print(" ", json.dumps(asdict(example), ensure_ascii=False)[:200])
    save(examples, report, Path(config.output_dir))
    print(f"wrote {config.output_dir}/curated.jsonl and data_report.json")


if __name__ == "__main__":
    main()
