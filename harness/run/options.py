"""What `harness run` takes (`RunOptions`) and the names it gives things on disk and in Docker.

Shared by the driver (run/driver.py), the per-entry pipeline (run/pipeline.py) that executors run
anywhere, and `harness reproduce`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.competition import STAGE_MINUTES, TRACK_GPU_GIB, stages_text, tracks_text
from harness.errors import ConfigError
from harness.helm.confs import (
    SHIPPED_CONFS,
    RunSpecConf,
    load_conf,
    shipped_conf,
    write_helm_conf,
)
from harness.helm.packs import Pack, install_pack, nested_counts, verify_pack
from harness.run.health import HealthSchedule


@dataclass(frozen=True)
class RunOptions:
    """Everything `harness run` takes; the defaults are the competition's."""

    track: str
    stage: str
    out: Path
    jobs: int = 1
    max_eval_instances: int = 100
    budget: int | None = None
    run_specs: str | None = None  # a shipped conf name or a conf file; default: the stage's
    base_image: str | None = None
    force: bool = False
    evaluate_flagged: bool = False
    build_timeout_s: float = 2 * 3600
    deadline_s: float | None = None  # default: the stage's limit
    health: HealthSchedule = field(default_factory=HealthSchedule)
    allow_network: bool = False
    # GPU indexes, one per entry at a time (infra/gpus.py); None: every GPU the engine exposes.
    gpus: tuple[int, ...] | None = None
    mem_limit: str | None = None
    max_sequence_length: int = 4096
    process_timeout_s: float = 600.0
    tokenizer_timeout_s: float = 30.0
    # HELM's own hard stop, past the deadline: the gateway answers /process at once by then, but
    # HELM retries failing /tokenize calls with long back-offs.
    helm_grace_s: float = 600.0
    build_secrets: Mapping[str, Path] = field(default_factory=dict)
    build_args: Mapping[str, str] = field(default_factory=dict)  # besides BASE_IMAGE
    # The builds' network: `host` lets them download from this machine (a local weights mirror).
    build_network: str | None = None
    # A HELM-ready conf used as it is instead of one written from `run_specs` (which then only
    # names the scenarios and their metrics): `harness reproduce` replays the original run's.
    helm_conf: Path | None = None
    # The coarse-to-fine tier (1-based) this run is (harness/run/tiers.py): its HELM runs go to a
    # suite of their own, so a tier reads only its own runs while sharing HELM's request cache.
    tier: int | None = None
    # An instance pack (harness/helm/packs.py): HELM evaluates its instances (the first ones of
    # each run spec under `budget`) and nothing else, offline; its entries are the conf.
    instances: Path | None = None

    @property
    def helm_offline(self) -> bool:
        """HELM may download data sets only for the competition's confs without a pack."""
        return self.instances is not None or (self.run_specs or self.stage) not in (
            "open",
            "closed",
        )

    def pack(self) -> Pack | None:
        """The instance pack, verified: an edited or incomplete one is a PackError (exit 2)."""
        if self.instances is None:
            return None
        pack = verify_pack(self.instances)
        nested_counts(pack, self.budget)  # a budget larger than the pack's is refused here
        return pack

    def scored_run_specs(self) -> tuple[Pack | None, RunSpecConf]:
        """The verified pack (None without one) and the run specs scored: the pack's, else the
        conf of `run_specs` or the stage. A pack is verified once per call: hashing it is I/O."""
        pack = self.pack()
        return pack, pack.run_spec_conf() if pack else load_conf(self.conf_path())

    def write_helm_conf(self, run_dir: Path) -> tuple[Path, RunSpecConf]:
        """Write the HELM conf of one entry's run into `run_dir` (helm-run's working folder):
        the pack's sample installed there, the replayed `helm_conf`, or `run_specs` under the
        budget. Returns its path and the run specs scored."""
        run_dir.mkdir(parents=True, exist_ok=True)
        pack, conf_spec = self.scored_run_specs()
        conf = run_dir / "run_specs.conf"
        if pack is not None:
            conf = install_pack(pack, run_dir, self.budget, helm_conf=self.helm_conf)
        elif self.helm_conf is not None:
            conf.write_bytes(self.helm_conf.read_bytes())
        else:
            write_helm_conf(
                conf_spec, conf, max_eval_instances=self.max_eval_instances, budget=self.budget
            )
        return conf, conf_spec

    def __post_init__(self) -> None:
        if self.track not in TRACK_GPU_GIB:
            raise ConfigError(f"unknown track {self.track!r}; choose {tracks_text()}")
        if self.stage not in STAGE_MINUTES:
            raise ConfigError(f"unknown stage {self.stage!r}; choose {stages_text()}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")

    @property
    def stage_limit_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else STAGE_MINUTES[self.stage] * 60

    def conf_path(self) -> Path:
        name = self.run_specs or self.stage
        if name in SHIPPED_CONFS:
            return shipped_conf(name)
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--run-specs {name!r} is neither {SHIPPED_CONFS} nor a file")
        return path
