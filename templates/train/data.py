"""Training data: load, convert to prompt/response, curate, mix. Used by train.py.

    python data.py --config config.yaml [--tokenizer PATH]   # preview: counts + curated.jsonl

Order of the pipeline, and why: every dataset is converted to one prompt/response form (a known
format, or a `fields` map naming the columns; a system prompt leads the prompt); empty and
over-long examples are dropped; exact then near duplicates are removed across all datasets (the
first occurrence wins, so list the dataset you trust most first); examples sharing a long n-gram
with an evaluated instance (`curation.decontaminate`) are dropped; only then is the seeded mixture
drawn, so that upsampling a dataset (weight > 1) is not undone by deduplication. Every drop is
counted per dataset (contamination also per evaluated scenario), printed and saved as JSON. A
dataset left with no usable example stops the run, naming it and why.

Near duplicates are judged on what each example has of its own: lines that recur in other
examples (a task's instructions, shared in-context examples, `Answer:`) are set aside first, so
templated task data such as HELM-shaped few-shot prompts is not collapsed, while a copy with a
word changed in its own text still is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from config import HUB_ID, ConfigError, DatasetSpec, TrainConfig, apply_template, load_config

USER_ROLES = {"human", "user", "prompter"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model"}
GUANACO_TURN = re.compile(r"###\s*(Human|Assistant):", re.IGNORECASE)
WORD = re.compile(r"\w+")
SHINGLE = 3  # words per shingle: one changed word in a 40-word text keeps Jaccard near 0.85
# LSH over 128 MinHash values in 32 bands of 4: a pair at Jaccard 0.8 becomes a candidate with
# probability 1 - 1e-7, at 0.3 with 0.23 (candidates are then compared exactly).
BANDS, ROWS = 32, 4
PACK_MANIFEST = "manifest.json"  # an instance pack (harness instances build) holds this file


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    source: str


# --- loading --------------------------------------------------------------------------------------


def read_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Rows of a local jsonl/json/parquet file, or of a data set (config `name`, `split`) in a
    local folder laid out like a hub repository or on the hub pinned as id@revision."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        return _read_local(path)
    if not spec.on_hub and not path.is_dir():
        hint = ""
        if HUB_ID.match(spec.source) and not path.suffix:
            hint = "; a hub data set must be pinned: owner/name@<commit sha>"
        raise ConfigError(f"dataset {spec.source}: no such file or folder{hint}")
    name, _, revision = spec.source.partition("@") if spec.on_hub else (str(path), "", "")
    import datasets

    try:
        table = datasets.load_dataset(name, spec.name, revision=revision or None, split=spec.split)
    except Exception as exc:  # datasets raises many unrelated types when offline or misnamed
        raise ConfigError(
            f"cannot load dataset {spec.source!r} (config {spec.name!r}, split {spec.split!r}): "
            f"{type(exc).__name__}: {exc}"
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
    """The last assistant turn is the response; earlier turns, labelled, form the prompt, after
    any system prompt."""
    system = [text for role, text in turns if role == "system"]
    turns = [turn for turn in turns if turn[0] != "system"]
    while turns and turns[-1][0] != "assistant":
        turns = turns[:-1]
    if not turns:
        return "", ""
    history, (_, response) = turns[:-1], turns[-1]
    if len(history) == 1:
        return _join(*system, history[0][1]), response
    labels = {"user": "User", "assistant": "Assistant"}
    labelled = (f"{labels[role]}: {text}" for role, text in history)
    return _join(*system, *labelled), response


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
        return _from_turns(turns)
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
    "oasst": _conversation,  # OpenAssistant's own message trees: `message_trees`
    "sharegpt": _conversation,
    "lima": _lima,
    "prompt-completion": lambda r: (_field(r, "prompt"), _field(r, "completion")),
}


def is_message_tree(rows: list[dict[str, Any]]) -> bool:
    """OpenAssistant's own layouts: one message per row (message_id, parent_id, role, text, rank),
    as OASST1/OASST2 are published on the hub, or nested trees ({"prompt": {..., "replies"}})."""
    first = rows[0] if rows else {}
    return "message_id" in first or isinstance(first.get("prompt"), dict)


def _rank(message: dict[str, Any]) -> float:
    rank = message.get("rank")
    return float("inf") if rank is None or rank != rank else float(rank)  # None or NaN: unranked


def message_trees(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every assistant message on a tree's best-ranked replies becomes an example, its path from
    the root as the prompt: a prompter message's best-ranked reply (rank 0) is followed, every
    follow-up question is. Deleted messages and those that failed review are left out, with
    their replies."""
    messages: list[dict[str, Any]] = []
    for row in rows:
        stack = (
            [{**row["prompt"], "parent_id": None}] if "replies" in row.get("prompt", ()) else [row]
        )
        while stack:
            message = stack.pop()
            messages.append(message)
            parent = message.get("message_id")
            stack.extend({**reply, "parent_id": parent} for reply in message.get("replies") or ())
    replies: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for message in messages:
        if not message.get("deleted") and message.get("review_result") is not False:
            replies[message.get("parent_id")].append(message)
    examples = []
    stack2: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
        (root, []) for root in replies[None]
    ]
    while stack2:
        message, history = stack2.pop()
        turns = [*history, (_role(str(message["role"])), str(message["text"]))]
        children = replies.get(message["message_id"], [])
        if turns[-1][0] == "assistant":
            examples.append(_from_turns(turns))
        elif children:
            children = [min(children, key=_rank)]
        stack2.extend((child, turns) for child in children)
    return examples


def _mapped(spec: DatasetSpec) -> Callable[[dict[str, Any]], tuple[str, str]]:
    fields = spec.fields
    assert fields is not None
    columns = [fields.prompt] if isinstance(fields.prompt, str) else fields.prompt

    def convert_row(row: dict[str, Any]) -> tuple[str, str]:
        system = _field(row, fields.system) if fields.system else ""
        return _join(system, *(_field(row, c) for c in columns)), _field(row, fields.completion)

    return convert_row


def convert(rows: list[dict[str, Any]], spec: DatasetSpec) -> list[Example]:
    source = spec.source
    if spec.format == "oasst" and is_message_tree(rows):
        try:
            pairs = message_trees(rows)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{source}: an OpenAssistant message lacks {exc.args[0] if exc.args else exc}"
            ) from None
        return [Example(p.strip(), r.strip(), source) for p, r in pairs]
    # The config holds one of the two (DatasetSpec's check).
    converter = _mapped(spec) if spec.fields else CONVERTERS[str(spec.format)]
    described = (
        f"the fields {spec.fields.model_dump()}" if spec.fields else f"format {spec.format!r}"
    )
    examples = []
    for number, row in enumerate(rows, 1):
        try:
            prompt, response = converter(row)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: record {number} does not look like {described} "
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

    @staticmethod
    def shingles(text: str) -> np.ndarray:
        """The sorted, distinct hashes of the text's SHINGLE-word shingles."""
        tokens = words(text)
        grams = {
            " ".join(tokens[i : i + SHINGLE]) for i in range(max(1, len(tokens) - SHINGLE + 1))
        }
        return np.unique(np.fromiter((_hash64(g) for g in grams), np.uint64, len(grams)))

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        hashed = (self.a[:, None] * shingles[None, :] + self.b[:, None]) >> np.uint64(32)
        return np.asarray(hashed.min(axis=1))


def _lines(example: Example) -> set[str]:
    text = example.prompt + "\n" + example.response
    return {" ".join(words(line)) for line in text.splitlines()} - {""}


class NearDuplicates:
    """Remembers kept examples; one whose Jaccard similarity to a kept one is at least
    `threshold` is a near duplicate. Similarity is measured on each example's own lines: a line
    found in another of `examples` (the whole set) is template, not content. MinHash LSH buckets
    find the candidates (close to linear in the data size); their exact similarity decides."""

    def __init__(self, threshold: float, examples: Iterable[Example]) -> None:
        self.threshold = threshold
        self.hasher = MinHasher()
        self.buckets: dict[tuple[int, bytes], list[np.ndarray]] = {}
        seen = Counter(line for example in examples for line in _lines(example))
        self.template = {line for line, count in seen.items() if count > 1}

    def own_text(self, example: Example) -> str:
        return "\n".join(sorted(_lines(example) - self.template))

    def __call__(self, example: Example) -> bool:
        own = self.own_text(example)
        if not own:  # nothing of its own to compare: a different arrangement of shared lines
            return False
        shingles = self.hasher.shingles(own)
        signature = self.hasher.signature(shingles)
        keys = [
            (band, signature[band * ROWS : (band + 1) * ROWS].tobytes()) for band in range(BANDS)
        ]
        for key in keys:
            for other in self.buckets.get(key, ()):
                shared = len(np.intersect1d(other, shingles, assume_unique=True))
                if shared >= self.threshold * (len(other) + len(shingles) - shared):
                    return True
        for key in keys:
            self.buckets.setdefault(key, []).append(shingles)
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


def _file_strings(path: Path) -> Iterator[str]:
    """Every string of a raw test-split file: CSV cells, JSON(L)/parquet values, else its lines
    (HELM's GSM8K files are JSONL without a suffix)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                yield from row
    elif path.suffix in (".json", ".jsonl", ".parquet"):
        yield from _strings(_read_local(path))
    else:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                yield from _strings(json.loads(line))
            except json.JSONDecodeError:
                yield line


def evaluated_texts(source: str) -> Iterator[tuple[str, str]]:
    """(scenario, text) for every evaluated text of `source`: an instance pack's evaluation
    instances (inputs and references; its in-context examples come from train splits and are
    left out) named by their scenario, or every string of a raw test-split file, or of each
    file under a folder, named by the file."""
    path = Path(source).expanduser()
    if (path / PACK_MANIFEST).is_file():
        manifest = json.loads((path / PACK_MANIFEST).read_text())
        for entry in manifest["entries"]:
            instances = path / "scenario_instances" / entry["key"] / "input_instances.json"
            for instance in json.loads(instances.read_text(encoding="utf-8")):
                if instance.get("split") != "train":
                    for text in _strings([instance["input"], instance.get("references", [])]):
                        yield entry["scenario"], text
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            name = file.relative_to(path.parent).as_posix()
            yield from ((name, text) for text in _file_strings(file))
    elif path.is_file():
        yield from ((path.name, text) for text in _file_strings(path))
    else:
        raise ConfigError(f"curation.decontaminate: {source} is no file, folder or pack")


class Contamination:
    """Which scenarios an example shares an n-gram of words with. N-grams are held as 64-bit
    hashes: a raw test split of millions of words then fits in memory."""

    def __init__(self, sources: Iterable[str], n: int) -> None:
        self.n = n
        self.scenarios: list[str] = []
        self.grams: dict[int, int] = {}  # n-gram hash -> bit mask of scenarios
        for source in sources:
            for scenario, text in evaluated_texts(source):
                if scenario not in self.scenarios:
                    self.scenarios.append(scenario)
                bit = 1 << self.scenarios.index(scenario)
                for gram in self._hashes(text):
                    self.grams[gram] = self.grams.get(gram, 0) | bit

    def _hashes(self, text: str) -> Iterator[int]:
        tokens = words(text)
        return (_hash64(" ".join(tokens[i : i + self.n])) for i in range(len(tokens) - self.n + 1))

    def __call__(self, example: Example) -> list[str]:
        mask = 0
        for gram in self._hashes(example.prompt + " " + example.response):
            mask |= self.grams.get(gram, 0)
        return [name for i, name in enumerate(self.scenarios) if mask >> i & 1]


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
        rows = read_rows(spec)
        if not rows:
            raise ConfigError(f"dataset {spec.source}: no rows (split {spec.split!r})")
        examples = convert(rows, spec)
        count = counts.setdefault(spec.source, Counter(loaded=len(examples)))
        kept = []
        for example in examples:
            if not example.prompt or not example.response:
                count["empty"] += 1
            elif too_long(example):
                count["too_long"] += 1
            else:
                kept.append(example)
        if not examples or count["empty"] == len(examples):
            way = f"the fields {spec.fields.model_dump()}" if spec.fields else spec.format
            raise ConfigError(
                f"dataset {spec.source}: none of its {len(rows)} rows gives a prompt and a "
                f"response read as {way}: check `format` or `fields`"
            )
        pools[spec.source] = kept

    def drop(reason: str, rejects: Callable[[Example], bool]) -> None:
        # Across every dataset in the listed order: the first occurrence is kept.
        for source, pool in pools.items():
            pools[source] = [e for e in pool if not rejects(e)]
            counts[source][reason] += len(pool) - len(pools[source])

    curation = config.curation
    if curation.dedup:
        drop("exact_duplicate", ExactDuplicates())
        if curation.near_dup_threshold is not None:
            every = [e for pool in pools.values() for e in pool]
            drop("near_duplicate", NearDuplicates(curation.near_dup_threshold, every))
    by_scenario: dict[str, Counter[str]] = {}
    if curation.decontaminate:
        shares = Contamination(curation.decontaminate, curation.contamination_ngram)

        def contaminated(example: Example) -> bool:
            scenarios = shares(example)
            by_scenario.setdefault(example.source, Counter()).update(scenarios)
            return bool(scenarios)

        drop("contaminated", contaminated)
    for source, pool in pools.items():
        if not pool:
            dropped = ", ".join(f"{k} {v}" for k, v in counts[source].items() if v)
            raise ConfigError(f"dataset {source}: no usable example is left ({dropped})")

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
    report: dict[str, Any] = {
        "datasets": {s: dict(c) for s, c in counts.items()},
        "total": dict(total),
    }
    if curation.decontaminate:
        # An example sharing n-grams with two scenarios counts under both.
        report["contaminated_by_scenario"] = {
            "datasets": {s: dict(c) for s, c in by_scenario.items() if c},
            "total": dict(sum(by_scenario.values(), Counter())),
        }
    return mixture, report


def print_report(report: dict[str, Any]) -> None:
    reasons = ("loaded", "empty", "too_long", "exact_duplicate", "near_duplicate", "contaminated")
    columns = (*reasons, "kept", "sampled")
    print("data: " + " | ".join(columns))
    for source, count in [*report["datasets"].items(), ("total", report["total"])]:
        print(f"  {source}: " + " | ".join(str(count.get(c, 0)) for c in columns))
    for scenario, dropped in report.get("contaminated_by_scenario", {}).get("total", {}).items():
        print(f"  contaminated by {scenario}: {dropped}")


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
