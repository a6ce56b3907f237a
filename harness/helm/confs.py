"""Run-spec confs: HELM confs (the HOCON subset HELM's own confs use) whose entries may carry two
keys of the harness's own, which HELM ignores:

    {description: "mmlu:subject=anatomy", priority: 1, scenario: "mmlu", metric: "exact_match"}

`scenario` groups run specs for scoring and budgeting (default: the run-spec name before `:`);
`metric` names the scenario's main metric (default: `MAIN_METRICS`, then helm.FALLBACK_METRICS).
A `model=` or `max_eval_instances=` argument is dropped: the harness sets both. A relative `path=`
of a `local_task` entry is resolved against the conf's folder, so confs work wherever they live.
`write_helm_conf` writes the HELM-ready conf, each entry carrying its scenario as a HELM group;
HELM appends `groups=SCENARIO` to the run's name, which is how a run (finished or failed) is
traced back to its scenario.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

RUNSPECS_DIR = Path(__file__).resolve().parent / "runspecs"
SHIPPED_CONFS = ("open", "closed", "offline")
_SCENARIO_NAME = re.compile(r"^[A-Za-z0-9_]+$")

# Main metric per HELM run-spec name, as HELM's schema_classic/schema_lite define them, except
# gsm: HELM Lite's final_number_exact_match, so a chain of thought before the answer still counts.
# local_task: exact match after normalising case, whitespace and punctuation, for both task kinds.
MAIN_METRICS: dict[str, str] = {
    "mmlu": "exact_match",
    "truthful_qa": "exact_match",
    "bbq": "quasi_exact_match",
    "summarization_cnndm": "rouge_2",
    "summarization_cnndm_rouge": "rouge_2",
    "gsm": "final_number_exact_match",
    "math": "math_equiv_chain_of_thought",
    "simple_mcqa": "exact_match",
    "synthetic_reasoning": "quasi_exact_match",
    "synthetic_reasoning_natural": "f1_set_match",
    "dyck_language": "exact_match_indicator",
    "local_task": "quasi_exact_match",
}


@dataclass(frozen=True)
class RunEntry:
    """One conf entry: a HELM run-entry description without `model=` or `max_eval_instances=`."""

    description: str
    scenario: str
    priority: int = 1
    metric: str | None = None

    @property
    def run_spec(self) -> str:
        return self.description.split(":", 1)[0]


@dataclass(frozen=True)
class RunSpecConf:
    path: Path
    entries: tuple[RunEntry, ...]

    @property
    def scenarios(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.scenario for entry in self.entries))

    def metrics(self) -> dict[str, str]:
        """Each scenario's main metric, where the conf or `MAIN_METRICS` names one."""
        chosen: dict[str, str] = {}
        for entry in self.entries:
            metric = entry.metric or MAIN_METRICS.get(entry.run_spec)
            if metric and chosen.setdefault(entry.scenario, metric) != metric:
                raise ConfigError(
                    f"{self.path}: scenario {entry.scenario!r} mixes the metrics "
                    f"{chosen[entry.scenario]!r} and {metric!r}; give it one `metric`"
                )
        return chosen


def shipped_conf(name: str) -> Path:
    """The path of a conf shipped with the harness: open, closed or offline."""
    if name not in SHIPPED_CONFS:
        raise ConfigError(f"unknown run-spec conf {name!r}; shipped: {', '.join(SHIPPED_CONFS)}")
    return RUNSPECS_DIR / f"{name}.conf"


def load_conf(path: Path) -> RunSpecConf:
    """Read and check a run-spec conf (see the module docstring for what an entry may hold)."""
    try:
        raw = parse_hocon(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the run-spec conf {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    items = raw.get("entries")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty `entries: [...]` list")
    entries = tuple(_run_entry(path, item) for item in items)
    conf = RunSpecConf(path=path, entries=entries)
    conf.metrics()
    return conf


def _run_entry(path: Path, item: Any) -> RunEntry:
    if not isinstance(item, dict) or not isinstance(item.get("description"), str):
        raise ConfigError(f"{path}: every entry needs a `description` string, got {item!r}")
    name, args = _split_description(item["description"])
    if not name:
        raise ConfigError(f"{path}: empty run-spec name in {item['description']!r}")
    args = {key: value for key, value in args.items() if key not in ("model", "max_eval_instances")}
    if name == "custom_mcqa":
        # Its run name holds the file's path, and HELM makes a folder of the name.
        raise ConfigError(f"{path}: use local_task:path=... instead of custom_mcqa")
    if name == "local_task" and "path" in args:
        task = (path.parent / args["path"]).resolve()
        if not task.is_file():
            raise ConfigError(f"{path}: local task file {task} does not exist")
        if any(char in str(task) for char in ",=:"):
            raise ConfigError(f"{path}: HELM cannot pass the path {task} (it holds , = or :)")
        args["path"] = str(task)
    scenario = str(item.get("scenario", name))
    if not _SCENARIO_NAME.match(scenario):
        raise ConfigError(f"{path}: scenario names are [A-Za-z0-9_]+, got {scenario!r}")
    priority, metric = item.get("priority", 1), item.get("metric")
    if not isinstance(priority, int) or not (metric is None or isinstance(metric, str)):
        raise ConfigError(f"{path}: `priority` must be an integer and `metric` a string: {item!r}")
    description = name + (":" + ",".join(f"{k}={v}" for k, v in args.items()) if args else "")
    return RunEntry(description=description, scenario=scenario, priority=priority, metric=metric)


def _split_description(description: str) -> tuple[str, dict[str, str]]:
    name, _, rest = description.strip().partition(":")
    args: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value in {description!r}, got {part!r}")
        args[key.strip()] = value.strip()
    return name.strip(), args


def split_budget(conf: RunSpecConf, budget: int) -> list[int]:
    """Instances per entry: `budget` shared equally by the scenarios, then by each one's entries.

    The NeurIPS 2023 challenge shared its budget this way, so a scenario with many run specs
    (57 MMLU subjects) weighs no more than one with a single run spec (GSM8K). Every entry gets
    at least one instance; remainders go to the earlier scenarios and entries.
    """
    if budget < 1:
        raise ConfigError(f"the instance budget must be at least 1, got {budget}")
    scenarios = conf.scenarios
    per_scenario = _shares(budget, len(scenarios))
    counts: list[int] = [0] * len(conf.entries)
    for scenario, share in zip(scenarios, per_scenario, strict=True):
        members = [i for i, entry in enumerate(conf.entries) if entry.scenario == scenario]
        for i, count in zip(members, _shares(share, len(members)), strict=True):
            counts[i] = max(1, count)
    return counts


def _shares(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def write_helm_conf(
    conf: RunSpecConf,
    dest: Path,
    *,
    max_eval_instances: int,
    budget: int | None = None,
    counts: Sequence[int] | None = None,
) -> Path:
    """Write the HELM-ready conf: every entry capped at `max_eval_instances`, and at its share of
    `budget` when one is given, or at its own count of `counts` (an instance pack's); each tagged
    with its scenario as a group."""
    if max_eval_instances < 1:
        raise ConfigError(f"--max-eval-instances must be at least 1, got {max_eval_instances}")
    if counts is not None:
        shares = list(counts)
    elif budget is not None:
        shares = split_budget(conf, budget)
    else:
        shares = [max_eval_instances] * len(conf.entries)
    entries = []
    for entry, share in zip(conf.entries, shares, strict=True):
        limit = min(share, max_eval_instances)
        separator = "," if ":" in entry.description else ":"
        entries.append(
            {
                "description": f"{entry.description}{separator}max_eval_instances={limit}",
                "priority": entry.priority,
                "groups": [entry.scenario],
            }
        )
    return write_helm_entries(dest, entries)


def write_helm_entries(dest: Path, entries: Sequence[dict[str, Any]]) -> Path:
    """Write HELM run entries (description, priority, groups) as a HELM conf at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # JSON is valid HOCON; one entry a line keeps the file readable next to the run's log.
    lines = ",\n".join(f"  {json.dumps(entry)}" for entry in entries)
    dest.write_text(f'{{"entries": [\n{lines}\n]}}\n')
    return dest


def parse_hocon(text: str) -> dict[str, Any]:
    """The HOCON subset run-spec confs use: objects, arrays, quoted or bare strings, numbers,
    booleans, `#` and `//` comments, `:` or `=`, commas or newlines between items, and an
    optional brace-less root object. Substitutions and includes are not supported."""
    tokens = _hocon_tokens(text)
    position = 0

    def peek() -> str:
        return tokens[position][0] if position < len(tokens) else ""

    def take() -> tuple[str, Any]:
        nonlocal position
        if position >= len(tokens):
            raise ValueError("the conf ends in the middle of a value")
        position += 1
        return tokens[position - 1]

    def skip_separators() -> None:
        nonlocal position
        while peek() in (",", "\n"):
            position += 1

    def value() -> Any:
        while peek() == "\n":
            take()
        kind, content = take()
        if kind == "{":
            return members("}")
        if kind == "[":
            items = []
            skip_separators()
            while peek() != "]":
                items.append(value())
                skip_separators()
            take()
            return items
        if kind in ("string", "word"):
            return content
        raise ValueError(f"unexpected {kind!r} in the conf")

    def members(closing: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        skip_separators()
        while peek() != closing:
            kind, key = take()
            if kind not in ("string", "word"):
                raise ValueError(f"expected a key, got {kind!r}")
            if peek() in (":", "="):
                take()
            elif peek() != "{":
                raise ValueError(f"expected ':' after the key {key!r}")
            result[str(key)] = value()
            skip_separators()
        if closing:
            take()
        return result

    skip_separators()
    if peek() == "{":
        take()
        root = members("}")
        skip_separators()
    else:
        root = members("")
    if position != len(tokens):
        raise ValueError("unexpected text after the root object")
    return root


_TOKEN = re.compile(
    r"""(?P<space>[ \t\r]+)|(?P<comment>(\#|//)[^\n]*)|(?P<newline>\n)
    |(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<punct>[{}\[\]:=,])|(?P<word>[^\s{}\[\]:=,"\#]+)""",
    re.VERBOSE,
)


def _hocon_tokens(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            line = text.count("\n", 0, position) + 1
            raise ValueError(f"line {line}: cannot read {text[position : position + 20]!r}")
        position = match.end()
        kind, content = match.lastgroup or "", match.group()
        if kind == "newline":
            tokens.append(("\n", None))
        elif kind == "punct":
            tokens.append((content, None))
        elif kind == "string":
            tokens.append(("string", json.loads(content)))
        elif kind == "word":
            tokens.append(("word", _bare_value(content)))
    return tokens


def _bare_value(word: str) -> Any:
    literals: dict[str, Any] = {"true": True, "false": False, "null": None}
    if word in literals:
        return literals[word]
    for number in (int, float):
        try:
            return number(word)
        except ValueError:
            pass
    return word


# --- running HELM ----------------------------------------------------------------------------
