"""A competition as a sequence of phases: the competition file (`harness serve --competition`),
the phase that is current, and the finals.

    competition = load_competition(Path("competition.yaml"))   # ConfigError naming the bad key
    phase = current_phase(competition, db.entered_phase(), time.time())
    enter_phase(db, store, competition, phase)                  # a final phase: finalists queued

A phase has dates (UTC), what it scores (a run-spec conf or an instance pack, else the command
line's), the harness stage its results are stored under (`open`, or `closed` for a final phase),
who sees its scores, and its quotas. The phase that is current is the latest one whose start has
passed, or a later one entered by hand (`harness competition advance`): never an earlier one. A
final phase (`selection: N`) takes no uploads; entering it queues a final run of each team's
selected entries (at most N; without a choice, its best published one) on the final phase's
stage, with no quota. The final leaderboard combines the stages with the competition's weights
(1/3 open + 2/3 closed: harness/competition.py) once the results are revealed.

Visibility of a phase's scores: `public` (the team sees its scores; published ones are on the
public leaderboard), `team` (the team sees its own scores; no public leaderboard), `organizers`
(teams see how their entries ended, not their scores). After the reveal everything is public.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.competition import STAGE_NAMES, TRACK_NAMES
from harness.errors import ConfigError
from harness.leaderboard.build import build_leaderboard

if TYPE_CHECKING:
    from harness.service.db import ServiceDB, Submission
    from harness.service.notify import Notifier
    from harness.store import Store

log = logging.getLogger("harness.service")
Visibility = Literal["organizers", "team", "public"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quota(_Strict):
    per_day: Annotated[int, Field(ge=0)] = 3  # per team, track and day (`quota_timezone`'s)
    # A team's own failures (build-failed, oom, timeout, ...) allowed in 7 days; None: they count
    # against `per_day` like scored entries, as a service without a competition file does.
    failures_per_week: Annotated[int, Field(ge=0)] | None = None


class Fact(_Strict):
    """One field of the fact sheet each submission carries (asked in the upload form and API)."""

    type: Literal["text", "int", "float"] = "text"
    required: bool = True
    help: str = ""

    def parse(self, name: str, raw: str | None) -> str | int | float | None:
        """The field's value from a form field; ValueError naming the field when it is bad."""
        if raw is None or not raw.strip():
            if self.required:
                raise ValueError(f"fact sheet field {name!r} is required")
            return None
        text = raw.strip()
        if len(text) > 500:
            raise ValueError(f"fact sheet field {name!r} is longer than 500 characters")
        try:
            return (
                int(text) if self.type == "int" else float(text) if self.type == "float" else text
            )
        except ValueError:
            raise ValueError(f"fact sheet field {name!r} takes an {self.type}: {text!r}") from None


class Phase(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][\w .-]*$")]
    start: datetime | None = None  # UTC; None: the first phase starts when the service does
    end: datetime | None = None  # UTC; uploads close then
    stage: Literal["open", "closed"] | None = None  # default: closed for a final phase, else open
    run_specs: str | None = None  # a shipped conf name or a conf file
    instances: Path | None = None  # an instance pack; neither: the command line's
    visibility: Visibility = "public"
    quota: Quota = Quota()
    selection: Annotated[int, Field(ge=1)] | None = None  # entries each team takes to the final

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Dates without a zone are UTC; others are converted to it."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.run_specs is not None and self.instances is not None:
            raise ValueError("give `run_specs` or `instances`, not both")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("`end` must be after `start`")
        return self

    @property
    def final(self) -> bool:
        return self.selection is not None

    @property
    def harness_stage(self) -> str:
        return self.stage or ("closed" if self.final else "open")


class Competition(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    tracks: list[str] = list(TRACK_NAMES)
    phases: Annotated[list[Phase], Field(min_length=1)]
    facts: dict[str, Fact] = {}  # the fact sheet: field name -> its type
    # Whose calendar days the daily quotas count (an IANA name: America/Los_Angeles).
    quota_timezone: str = "UTC"

    @field_validator("quota_timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        zone(name)
        return name

    @property
    def quota_zone(self) -> tzinfo:
        return zone(self.quota_timezone)

    @field_validator("tracks")
    @classmethod
    def _known(cls, tracks: list[str]) -> list[str]:
        if not tracks or set(tracks) - set(TRACK_NAMES):
            raise ValueError(f"tracks are one or more of {', '.join(TRACK_NAMES)}; got {tracks}")
        return tracks

    @field_validator("facts")
    @classmethod
    def _fields(cls, facts: dict[str, Fact]) -> dict[str, Fact]:
        for name in facts:
            if not name.isidentifier() or name in _FORM_FIELDS:
                raise ValueError(f"field {name!r}: an identifier, and not one of {_FORM_FIELDS}")
        return facts

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique; got {names}")
        finals = [i for i, p in enumerate(self.phases) if p.final]
        if finals and finals != [len(self.phases) - 1]:
            raise ValueError("only the last phase may be a final one (`selection`)")
        if finals and len(self.phases) < 2:
            raise ValueError("a final phase needs an earlier phase to select entries from")
        for before, after in zip(self.phases, self.phases[1:], strict=False):
            if after.start is None and before.start is not None:
                raise ValueError(f"phase {after.name!r} needs a `start` (the one before has one)")
            if before.start and after.start and after.start < (before.end or before.start):
                raise ValueError(f"phase {after.name!r} starts before {before.name!r} ends")
        return self

    def phase(self, name: str) -> Phase:
        found = next((p for p in self.phases if p.name == name), None)
        if found is None:
            raise ConfigError(f"no phase named {name!r}; phases: {', '.join(self.names)}")
        return found

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.phases]

    def next_phase(self, phase: Phase) -> Phase | None:
        index = self.names.index(phase.name)
        return self.phases[index + 1] if index + 1 < len(self.phases) else None

    @property
    def stages(self) -> list[str]:
        """The harness stages the phases score, in the competition's order."""
        used = {p.harness_stage for p in self.phases}
        return [stage for stage in STAGE_NAMES if stage in used]


_FORM_FIELDS = ("file", "track", "visibility", "csrf")


def zone(name: str) -> tzinfo:
    """The time zone named `name` (IANA); ValueError naming it when there is none."""
    if name == "UTC":  # needs no time zone database
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"no time zone named {name!r} (an IANA name: Europe/Paris)") from None


def single_phase(quota: int, quota_timezone: str = "UTC") -> Competition:
    """A service without a competition file: one open phase, public, `quota` a day."""
    return Competition(
        name="competition",
        phases=[Phase(name="open", quota=Quota(per_day=quota))],
        quota_timezone=quota_timezone,
    )


def load_competition(path: Path) -> Competition:
    """Read and validate a competition file; a ConfigError names the file and the bad key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the competition file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        competition = Competition.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            + (f" (got {error['input']!r})" if isinstance(error["input"], str | int) else "")
            for error in exc.errors()
        ]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    # Relative pack and conf paths are the file's neighbours.
    path = path.resolve()
    phases = [
        phase.model_copy(
            update={
                "instances": path.parent / phase.instances if phase.instances else None,
                "run_specs": str(path.parent / phase.run_specs)
                if phase.run_specs and (path.parent / phase.run_specs).is_file()
                else phase.run_specs,
            }
        )
        for phase in competition.phases
    ]
    return competition.model_copy(update={"phases": phases})


def saved_competition(db: ServiceDB) -> Competition | None:
    """The competition `harness serve --competition` runs on this database (it saves it at start
    for the commands), None for a service without one."""
    saved = db.state("competition")
    return Competition.model_validate_json(saved) if saved is not None else None


def current_phase(competition: Competition, entered: str | None, now: float) -> Phase:
    """The latest phase whose start has passed, or `entered` (by hand) when that is later."""
    by_time = 0
    for index, phase in enumerate(competition.phases):
        if phase.start is None or phase.start.timestamp() <= now:
            by_time = index
    by_hand = competition.names.index(entered) if entered in competition.names else 0
    return competition.phases[max(by_time, by_hand)]


def uploads_closed(phase: Phase, now: float) -> str | None:
    """Why `phase` takes no upload now, or None when it does."""
    if phase.final:
        return f"the final phase {phase.name!r} takes no uploads: selected entries are re-run"
    if phase.start is not None and now < phase.start.timestamp():
        return f"the phase {phase.name!r} starts at {phase.start.isoformat()}"
    if phase.end is not None and now >= phase.end.timestamp():
        return f"the phase {phase.name!r} ended at {phase.end.isoformat()}"
    return None


def best_published(db: ServiceDB, store: Store, team: str, track: str) -> Submission | None:
    """The team's best published scored entry on `track` (the leaderboard's ranking)."""
    mine = {
        sub.entry: sub
        for sub in db.submissions(states=())
        if sub.team == team and sub.track == track and sub.visibility == "published"
        and sub.status == "scored" and not sub.final_run and not sub.disqualified
    }  # fmt: skip
    if not mine:
        return None
    board = build_leaderboard(
        store, entries=mine, track=track, intervals=False, only_stages=["open"]
    )
    ranked = [row.entry for row in board.rows if row.rank is not None]
    return mine[ranked[0]] if ranked else None


def finalists(
    db: ServiceDB, store: Store, competition: Competition, final: Phase
) -> list[Submission]:
    """Each team's entries for the final, per track: its selection (at most `final.selection`,
    the latest choices first), else its best published scored entry."""
    chosen: list[Submission] = []
    assert final.selection is not None
    for team in db.teams():
        for track in competition.tracks:
            own = [
                sub
                for sub in db.submissions(states=())
                if sub.team == team.name and sub.track == track and not sub.final_run
                and sub.status == "scored" and not sub.disqualified
            ]  # fmt: skip
            selected = [sub for sub in own if sub.selected][: final.selection]
            best = None if selected else best_published(db, store, team.name, track)
            chosen += selected or ([best] if best else [])
    return chosen


def enter_phase(db: ServiceDB, store: Store, competition: Competition, phase: Phase) -> list[str]:
    """Make `phase` the current one (never going back); a final phase queues a final run of each
    finalist. Returns the final runs queued now (none when they were queued already)."""
    db.enter_phase(phase.name, competition.names)
    if not phase.final:
        return []
    return [
        run
        for sub in finalists(db, store, competition, phase)
        if (run := db.add_final_run(sub.id, phase.name)) is not None
    ]


def final_entries(db: ServiceDB, track: str) -> dict[str, tuple[str, Submission]]:
    """The finalists of `track`, disqualified ones too: store entry -> (its row's label: the
    team, or `team (id)` for a team with several, its original submission)."""
    originals = [
        original
        for run in db.submissions()
        if run.final_of and run.track == track
        and (original := db.submission(run.final_of)) is not None
    ]  # fmt: skip
    teams = [sub.team for sub in originals]
    return {
        sub.entry: (sub.team if teams.count(sub.team) == 1 else f"{sub.team} ({sub.id})", sub)
        for sub in originals
    }


def disqualifications(db: ServiceDB) -> dict[str, str]:
    """Submission id -> the organizers' reason, for each disqualified submission."""
    return {sub.id: sub.disqualified for sub in db.submissions() if sub.disqualified}


class PhaseClock:
    """Moves the competition on as time passes and tells the teams (notify.py): `tick()` runs on
    each turn of the queue's loop. Phase events are sent once each, from the service (which has
    the notification settings), also for a phase entered or results revealed by a command.
    """

    def __init__(
        self, db: ServiceDB, store: Store, competition: Competition, notifier: Notifier | None
    ) -> None:
        self.db, self.store, self.competition, self.notifier = db, store, competition, notifier

    def tick(self) -> None:
        now = time.time()
        entered = self.db.state("phase")
        phase = current_phase(self.competition, entered, now)
        if entered is None and phase.start is not None and now < phase.start.timestamp():
            return  # the competition has not begun
        if entered != phase.name:
            queued = enter_phase(self.db, self.store, self.competition, phase)
            log.info("phase %s started; %d final run(s) queued", phase.name, len(queued))
        announced = self.db.state("announced")
        if announced != phase.name:
            if announced is not None and self.db.state("ended") != announced:
                self._tell("phase.ended", self.competition.phase(announced))
            self._tell("phase.started", phase)
            self.db.set_state("announced", phase.name)
        if phase.end and now >= phase.end.timestamp() and self.db.state("ended") != phase.name:
            self._tell("phase.ended", phase)
            self.db.set_state("ended", phase.name)
        if self.db.state("revealed") and self.db.state("revealed_announced") is None:
            self._tell("results.revealed", phase)
            self.db.set_state("revealed_announced", self.db.state("revealed") or "")

    def _tell(self, event: str, phase: Phase) -> None:
        if self.notifier is None:
            return
        ends = phase.end.isoformat(timespec="seconds") if phase.end else None
        try:
            self.notifier.competition(event, self.competition.name, phase.name, ends)
        except Exception:  # telling must never stop the queue
            log.exception("the teams could not be told of %s", event)
