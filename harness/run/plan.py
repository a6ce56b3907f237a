"""`harness plan`: how long a stage takes on a fleet, with and without tiers, and how many GPUs
finish it by a deadline.

    costs = measured_costs(results_dir, track) or default_costs(track)
    plan = make_plan(costs, entries=225, gpus=16, instances=..., stage_limit_s=..., tiers=...)

The model, stated so it can be argued with:

- an entry holds a GPU while it is started (until healthy) and evaluated: start + instances x
  per-instance time, at most the stage's time limit (the gateway stops it there);
- builds need no GPU and overlap other entries' evaluations (`--jobs` above the GPU count), so
  they add one build to the stage, the first wave's;
- GPU time divides evenly over the GPUs (entries are many and short next to the stage);
- with tiers, every entry pays the first budget; each later tier's entrants, a start and the
  instances beyond the previous budget (the rest come from HELM's cache). The share of entries
  entering a later tier is the kept share times `CONTENTION`, the measured excess of entries whose
  interval reaches the cut (benchmarks/bench_sparse.py);
- with the adaptive schedule (`--tiers adaptive`, top 10, confidence 0.95), each round's entrants
  pay a start and the instances beyond the previous round's budget; the share of the field
  entering each round is the one bench_sparse measured on 225 entries for the field's shape
  (`ADAPTIVE_ENTERING`), taken to hold for other field sizes.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.competition import TRACKS, tracks_text
from harness.errors import ConfigError
from harness.run.tiers import Tiers
from harness.store import Step, StepStatus, Store

if TYPE_CHECKING:
    from harness.run.adaptive import Adaptive

# Stated defaults for a 7B model served by the competition's HTTP server; replace them with a
# measured run (`--from RESULTS_DIR`). Seconds.
DEFAULT_BUILD_S = 600.0
DEFAULT_START_S = 120.0
# Entries in contention after a tier, over the kept share: the ones whose interval reaches the cut
# (bench_sparse: 20 kept of 225 let ~35 through at 30 instances per entry).
CONTENTION = 1.75
# Share of the field entering each round of `--tiers adaptive --target-top 10 --confidence 0.95`
# (budgets full/40 and then 1.5x and 4/3x in turn, 12 rounds), by field shape: `make
# bench-sparse`, 225 entries, 40 seeds.
ADAPTIVE_ENTERING = {
    "spread": (1.000, 0.575, 0.452, 0.375, 0.290, 0.234, 0.180, 0.146, 0.108, 0.084, 0.059, 0.041),
    "crowded": (1.000, 0.690, 0.582, 0.506, 0.419, 0.360, 0.293, 0.244, 0.184, 0.143, 0.096, 0.063),
    "hard": (1.000, 0.688, 0.575, 0.497, 0.408, 0.343, 0.266, 0.209, 0.152, 0.120, 0.091, 0.070),
}


@dataclass(frozen=True)
class Costs:
    build_s: float
    start_s: float
    instance_s: float
    source: str  # "defaults" or where they were measured


@dataclass(frozen=True)
class Plan:
    label: str
    gpu_hours: float
    stage_hours: float  # on the fleet given
    gpus_for_deadline: int | None  # None: no deadline asked


def default_costs(track: str) -> Costs:
    if track not in TRACKS:
        raise ConfigError(f"unknown track {track!r}; choose {tracks_text()}")
    return Costs(DEFAULT_BUILD_S, DEFAULT_START_S, TRACKS[track].instance_s, "stated defaults")


def measured_costs(results_dir: Path, stage: str) -> Costs:
    """Medians over the entries of a past run: build and serve steps that succeeded, and the
    evaluate step's duration per request the entry answered."""
    builds, starts, per_instance = [], [], []
    with Store(results_dir, create=False) as store:
        for entry in store.entries():
            steps = store.latest_steps(entry, stage)
            ok = {s: r for s, r in steps.items() if r.status is StepStatus.OK and r.duration_s}
            if Step.BUILD in ok:
                builds.append(ok[Step.BUILD].duration_s or 0.0)
            if Step.SERVE in ok:
                starts.append(ok[Step.SERVE].duration_s or 0.0)
            gateway = store.gateway_stats(entry, stage)
            if Step.EVALUATE in ok and gateway and gateway[0].answered:
                per_instance.append((ok[Step.EVALUATE].duration_s or 0.0) / gateway[0].answered)
    if not (builds and starts and per_instance):
        raise ConfigError(
            f"{results_dir} has no {stage}-stage entry that was built, started and evaluated: "
            "nothing to measure (leave out --from for the stated defaults)"
        )
    return Costs(
        statistics.median(builds),
        statistics.median(starts),
        statistics.median(per_instance),
        f"medians of {len(per_instance)} entries in {results_dir}",
    )


def make_plan(
    costs: Costs,
    *,
    entries: int,
    gpus: int,
    instances: int,
    stage_limit_s: float,
    tiers: Tiers | None = None,
    adaptive: Adaptive | None = None,
    field: str = "crowded",
    deadline_s: float | None = None,
) -> list[Plan]:
    """The full budget (`instances` per entry), and the tiers or the adaptive schedule when
    given (`field`: the shape of the field the adaptive schedule's savings are taken from)."""
    if entries < 1 or gpus < 1 or instances < 1:
        raise ConfigError("--entries, --gpus and the instance budget must be at least 1")

    def hold(extra_instances: int) -> float:
        return costs.start_s + min(extra_instances * costs.instance_s, stage_limit_s)

    plans = [("full budget", entries * hold(instances))]
    if tiers is not None:
        seconds, previous, entering = 0.0, 0, float(entries)
        for index, budget in enumerate(tiers.budgets):
            if index:
                kept = tiers.cut(round(entering))
                entering = min(entering, kept * CONTENTION)
            seconds += entering * hold(budget - previous)
            previous = budget
        plans.append((f"tiers {','.join(map(str, tiers.budgets))}", seconds))
    if adaptive is not None:
        if field not in ADAPTIVE_ENTERING:
            raise ConfigError(f"--field is one of {', '.join(ADAPTIVE_ENTERING)}, got {field!r}")
        if (adaptive.top, adaptive.confidence) != (10, 0.95):
            raise ConfigError(
                "the adaptive schedule's savings are measured for --target-top 10 "
                "--confidence 0.95 only"
            )
        if len(adaptive.rounds) != len(ADAPTIVE_ENTERING[field]):
            raise ConfigError(
                f"the adaptive schedule's savings are measured for {len(ADAPTIVE_ENTERING[field])}"
                f" rounds; a budget of {adaptive.full} has {len(adaptive.rounds)}"
            )
        seconds, previous = 0.0, 0
        for share, budget in zip(ADAPTIVE_ENTERING[field], adaptive.rounds, strict=True):
            seconds += share * entries * hold(budget - previous)
            previous = budget
        plans.append((f"adaptive, {field} field", seconds))
    result = []
    for label, gpu_seconds in plans:
        needed = None
        if deadline_s is not None:
            room = deadline_s - costs.build_s
            if room <= 0:
                raise ConfigError("the deadline is shorter than one build: no fleet makes it")
            needed = math.ceil(gpu_seconds / room)
        stage_s = costs.build_s + gpu_seconds / gpus
        result.append(Plan(label, gpu_seconds / 3600, stage_s / 3600, needed))
    return result
