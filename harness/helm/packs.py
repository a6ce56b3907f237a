"""Instance packs: a stage's evaluation instances, sampled once with HELM's own scenario code,
pinned by hash and scored offline.

    PACK/manifest.json                                 conf, entries, counts, budget, seed, HELM
                                                       version, sha256 of every other file
    PACK/scenario_instances/KEY/input_instances.json   what `helm-run --cache-instances` reads
    PACK/scenarios/big_bench/TASK[/SUBTASK]/task.json  BIG-bench task definitions without their
                                                       examples (its run-spec function reads them)
    PACK/tasks/NAME.jsonl                              local task files (their run spec reads them)

`build_pack` runs `plugins/sample_instances.py` in the HELM environment over raw data laid
out like HELM's `benchmark_output/scenarios/`; `verify_pack` refuses a pack whose files changed;
`install_pack` puts a pack into a HELM run folder so that helm-run evaluates exactly its
instances (or, under a smaller budget, the first of them: `nested_counts`) and downloads nothing.

Nested samples: an entry's eval instances are stored in one seeded order that does not depend on
the budget, and a budget's share of every entry is monotone in the budget (`helm.split_budget`),
so the instances of budget B are a prefix of those of any larger budget, pack or no pack.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.helm.confs import RunEntry, RunSpecConf, split_budget, write_helm_conf
from harness.helm.runner import PLUGIN, check_helm, run_helper

MANIFEST = "manifest.json"
FORMAT = 1
INSTANCES_DIR = "scenario_instances"
INSTANCES_FILE = "input_instances.json"
SAMPLER = Path(__file__).resolve().parent / "plugins" / "sample_instances.py"


class PackError(ConfigError):
    """A pack that is missing, incomplete or edited since it was built."""


@dataclass(frozen=True)
class PackEntry:
    """One conf entry of a pack: its HELM run entry and what the pack holds for it."""

    description: str
    scenario: str
    priority: int
    metric: str | None
    run_spec: str  # HELM's run-spec name, as results name it
    key: str  # the folder under scenario_instances/
    instances: int  # eval instances, in sample order
    train: int  # in-context examples, stored before them
    available: int  # eval instances the scenario had


@dataclass(frozen=True)
class Pack:
    path: Path
    conf: str
    budget: int
    seed: int
    helm_version: str
    entries: tuple[PackEntry, ...]
    files: Mapping[str, str]
    sha256: str  # of manifest.json, which holds every other file's hash

    def run_spec_conf(self) -> RunSpecConf:
        """The pack's entries as a conf (for scenarios, metrics and budget shares)."""
        return RunSpecConf(
            path=self.path / MANIFEST,
            entries=tuple(
                RunEntry(e.description, e.scenario, priority=e.priority, metric=e.metric)
                for e in self.entries
            ),
        )


# --- build ----------------------------------------------------------------------------------


def build_pack(
    conf: RunSpecConf,
    *,
    budget: int,
    data_dir: Path,
    out: Path,
    seed: int = 0,
    bin_dir: Path | None = None,
    timeout_s: float = 6 * 3600,
) -> Pack:
    """Sample `budget` instances of `conf` from `data_dir` with HELM and write the pack `out`.

    The budget is shared as `harness run --budget` shares it. HELM downloads into `data_dir`
    what is missing there when the machine is online; offline, a missing file fails the build
    with the run spec it belongs to.
    """
    counts = split_budget(conf, budget)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder for the pack")
    if not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a folder")
    python = check_helm(bin_dir) / "python"
    with tempfile.TemporaryDirectory(prefix="harness-pack-") as tmp:
        staging = Path(tmp)
        entries = _stage_local_tasks(conf.entries, staging / "tasks")
        request = {
            "data_dir": str(data_dir.resolve()),
            "plugins": [str(PLUGIN)],
            "seed": seed,
            "entries": [
                {"description": entry.description, "eval": count}
                for entry, count in zip(entries, counts, strict=True)
            ],
        }
        sampled_file = run_helper(
            python, SAMPLER, staging, request,
            output="result.json", what="sampling the pack", timeout_s=timeout_s,
        )  # fmt: skip
        result = json.loads(sampled_file.read_text())
        errors = [
            f"{entry.description}: {sampled['error']}"
            for entry, sampled in zip(entries, result["entries"], strict=True)
            if "error" in sampled
        ]
        if errors:
            raise ConfigError("HELM could not load every run spec's data:\n" + "\n".join(errors))
        # Written aside and moved into place whole: a failed build leaves no half pack behind.
        built = staging / "pack"
        _write_pack(
            built, conf, entries, result, staging / "tasks", data_dir, budget=budget, seed=seed
        )
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, out)
    return verify_pack(out)


def _stage_local_tasks(entries: Sequence[RunEntry], tasks: Path) -> list[RunEntry]:
    """Copy local task files beside the sampler, named by a path relative to the run folder:
    that path is part of HELM's instance key, so it must not depend on where files lie."""
    staged = []
    for entry in entries:
        name, _, args = entry.description.partition(":")
        if name != "local_task":
            staged.append(entry)
            continue
        parts = dict(part.split("=", 1) for part in args.split(",") if part)
        source = Path(parts["path"])
        target = tasks / source.name
        if target.exists() and target.read_bytes() != source.read_bytes():
            raise ConfigError(f"two local tasks are named {source.name}; rename one")
        tasks.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        parts["path"] = f"tasks/{source.name}"
        description = "local_task:" + ",".join(f"{k}={v}" for k, v in parts.items())
        staged.append(RunEntry(description, entry.scenario, entry.priority, entry.metric))
    return staged


def _write_pack(
    out: Path,
    conf: RunSpecConf,
    entries: Sequence[RunEntry],
    result: dict[str, Any],
    tasks: Path,
    data_dir: Path,
    *,
    budget: int,
    seed: int,
) -> None:
    out.mkdir(parents=True)
    keys: dict[str, str] = {}
    pack_entries = []
    for entry, sampled in zip(entries, result["entries"], strict=True):
        if not sampled["available"]:
            raise ConfigError(f"{entry.description}: the data has no evaluation instances")
        if sampled["key"] in keys:
            raise ConfigError(
                f"{keys[sampled['key']]!r} and {entry.description!r} read the same instances "
                f"({sampled['key']}); a pack needs one sample per scenario instance set"
            )
        keys[sampled["key"]] = entry.description
        _write_json(out / INSTANCES_DIR / sampled["key"] / INSTANCES_FILE, sampled["instances"])
        train = sampled["train"]
        pack_entries.append(
            PackEntry(
                description=entry.description,
                scenario=entry.scenario,
                priority=entry.priority,
                metric=entry.metric,
                run_spec=sampled["run_spec"],
                key=sampled["key"],
                instances=len(sampled["instances"]) - train,
                train=train,
                available=sampled["available"],
            )
        )
        if entry.run_spec == "big_bench":
            _copy_big_bench_task(sampled["key"], data_dir, out / "scenarios")
    if tasks.is_dir():
        shutil.copytree(tasks, out / "tasks")
    files = {
        path.relative_to(out).as_posix(): sha256_file(path)
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "format": FORMAT,
        "conf": conf.path.name,
        "budget": budget,
        "seed": seed,
        "helm_version": result["helm_version"],
        "entries": [asdict(entry) for entry in pack_entries],
        "files": files,
    }
    _write_json(out / MANIFEST, manifest, indent=1)


def _copy_big_bench_task(key: str, data_dir: Path, scenarios: Path) -> None:
    """BIG-bench's run-spec function reads the task's task.json (its metrics and prompt
    prefixes) before any instance is loaded; the pack keeps it without its examples."""
    args = dict(part.split("=", 1) for part in key.partition(":")[2].split(",") if part)
    relative = Path("big_bench", args["task"], args.get("subtask", ""), "task.json")
    task = json.loads((data_dir / relative).read_text())
    task["examples"] = []
    _write_json(scenarios / relative, task, indent=1)


def _write_json(path: Path, value: Any, indent: int | None = None) -> None:
    # Sorted keys and fixed separators: the same data gives the same bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    separators = (",", ": ") if indent else (",", ":")
    text = json.dumps(value, sort_keys=True, indent=indent, separators=separators)
    path.write_text(text + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- verify and load ------------------------------------------------------------------------


def verify_pack(path: Path) -> Pack:
    """The pack at `path`, after checking every file against its manifest.

    PackError lists what differs: files changed, missing or added since the build, and
    entries whose instance file is absent.
    """
    manifest_file = path / MANIFEST
    try:
        raw = manifest_file.read_bytes()
        manifest = json.loads(raw)
        files: dict[str, str] = manifest["files"]
        entries = tuple(PackEntry(**entry) for entry in manifest["entries"])
        pack = Pack(
            path=path, conf=manifest["conf"], budget=int(manifest["budget"]),
            seed=int(manifest["seed"]), helm_version=manifest["helm_version"], entries=entries,
            files=files, sha256=hashlib.sha256(raw).hexdigest(),
        )  # fmt: skip
    except OSError as exc:
        raise PackError(f"{path} is not an instance pack: cannot read {MANIFEST}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{manifest_file} is not a pack manifest: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise PackError(f"{manifest_file}: pack format {manifest.get('format')}, expected {FORMAT}")
    present = {
        p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink()
    } - {MANIFEST}
    owners = {f"{INSTANCES_DIR}/{entry.key}/{INSTANCES_FILE}": entry for entry in entries}
    problems = [
        f"missing: {name}"
        + (f" (the instances of {owners[name].description})" if name in owners else "")
        for name in sorted(set(files) - present)
    ]
    problems += [f"not in the manifest: {name}" for name in sorted(present - set(files))]
    problems += [
        f"changed since the build: {name}"
        for name in sorted(set(files) & present)
        if (path / name).is_symlink() or sha256_file(path / name) != files[name]
    ]
    problems += [
        f"no instances for {entry.description}"
        for entry in entries
        if f"{INSTANCES_DIR}/{entry.key}/{INSTANCES_FILE}" not in files
    ]
    if problems:
        raise PackError(f"the pack {path} does not match its manifest:\n  " + "\n  ".join(problems))
    return pack


# --- use ------------------------------------------------------------------------------------


def nested_counts(pack: Pack, budget: int | None = None) -> list[int]:
    """Eval instances per entry that `budget` takes from `pack`: the first ones of each.

    None takes the whole pack. For one seed and data set, this is exactly the sample a pack
    built with `budget` would hold, so coarse-to-fine tiers can run on one pack.
    """
    if budget is None:
        return [entry.instances for entry in pack.entries]
    if budget > pack.budget:
        raise PackError(f"--budget {budget} is larger than the pack's budget {pack.budget}")
    shares = split_budget(pack.run_spec_conf(), budget)
    return [min(share, entry.instances) for share, entry in zip(shares, pack.entries, strict=True)]


def install_pack(
    pack: Pack, run_dir: Path, budget: int | None = None, *, helm_conf: Path | None = None
) -> Path:
    """Make `run_dir` (helm-run's working folder) evaluate the pack's `budget` sample; returns
    the HELM conf to run with `--cache-instances`.

    Every instance file HELM will look for is written, so helm-run never runs scenario code
    (which would download). The files are rewritten on every call: a later, larger budget
    asks only its new instances of the model, the others are in HELM's request cache.
    `helm_conf`, a conf an earlier call wrote, replays that run's sample instead (reproduce).
    """
    counts = _replayed_counts(pack, helm_conf) if helm_conf else nested_counts(pack, budget)
    output = run_dir / "benchmark_output"
    for entry, count in zip(pack.entries, counts, strict=True):
        source = pack.path / INSTANCES_DIR / entry.key / INSTANCES_FILE
        instances = json.loads(source.read_text(encoding="utf-8"))
        _write_json(output / INSTANCES_DIR / entry.key / INSTANCES_FILE,
                    instances[: entry.train + count])  # fmt: skip
    for folder, target in (("scenarios", output / "scenarios"), ("tasks", run_dir / "tasks")):
        if (pack.path / folder).is_dir():
            shutil.copytree(pack.path / folder, target, dirs_exist_ok=True)
    conf = run_dir / "run_specs.conf"
    if helm_conf is not None:
        conf.write_bytes(helm_conf.read_bytes())
        return conf
    return write_helm_conf(
        pack.run_spec_conf(), conf, max_eval_instances=max(counts), counts=counts
    )


def _replayed_counts(pack: Pack, helm_conf: Path) -> list[int]:
    """Each entry's max_eval_instances in a conf `install_pack` wrote for this pack."""
    try:
        written = json.loads(helm_conf.read_text())["entries"]
        descriptions = [item["description"] for item in written]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{helm_conf} is not a conf written for an instance pack") from exc
    if len(descriptions) != len(pack.entries):
        raise PackError(f"{helm_conf} was not written for the pack {pack.path}")
    counts = []
    for entry, description in zip(pack.entries, descriptions, strict=True):
        # write_helm_conf appends the count to the entry's own description.
        head, _, count = description.rpartition("max_eval_instances=")
        if head[:-1] != entry.description or not count.isdigit():
            raise PackError(f"{helm_conf} was not written for the pack {pack.path}")
        counts.append(min(int(count), entry.instances))
    return counts


def describe(pack: Pack) -> list[dict[str, Any]]:
    """Rows of `harness instances show`: scenario, run spec, instances, main metric."""
    metrics = pack.run_spec_conf().metrics()
    return [
        {
            "scenario": entry.scenario,
            "run_spec": entry.run_spec,
            "instances": entry.instances,
            "train": entry.train,
            "available": entry.available,
            "metric": metrics.get(entry.scenario, "(first of helm.FALLBACK_METRICS)"),
        }
        for entry in pack.entries
    ]
