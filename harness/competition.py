"""The competition's facts, in one place: its tracks and its stages.

Every module that needs a track's GPU memory, a stage's time limit or weight imports it from here;
the submission templates keep their own copy (they never import the harness) and
tests/harness/test_competition.py checks that it agrees. Adding a track is one entry in `TRACKS`
(and the templates' copy).

    track   GPU memory   price (USD per GPU-hour)   seconds per HELM instance (plan estimate)
    4090    24 GiB       0.35                       2.0
    A100    40 GiB       1.0                        1.2

    stage   time limit   weight in the final score
    open    300 min      1/3
    closed  600 min      2/3
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Track:
    name: str
    gpu_gib: int  # the track's GPU memory: an entry that needs more is out of the track
    price_per_hour: float  # USD per GPU-hour, the 2023 organizers' figures (rented by the hour)
    instance_s: float  # stated seconds per HELM instance of a 7B model (`harness plan`)

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_gib * GIB


@dataclass(frozen=True)
class Stage:
    name: str
    minutes: int  # the wall-clock limit of an entry's evaluation
    weight: float  # its share of the final score (open and closed add up to 1)


TRACKS: dict[str, Track] = {
    "4090": Track("4090", gpu_gib=24, price_per_hour=0.35, instance_s=2.0),
    "A100": Track("A100", gpu_gib=40, price_per_hour=1.0, instance_s=1.2),
}
STAGES: dict[str, Stage] = {
    "open": Stage("open", minutes=300, weight=1 / 3),
    "closed": Stage("closed", minutes=600, weight=2 / 3),
}
TRACK_NAMES = tuple(TRACKS)
STAGE_NAMES = tuple(STAGES)  # in the order a competition runs them
# Derived views, for the modules that only need one number per key.
STAGE_MINUTES = {name: stage.minutes for name, stage in STAGES.items()}
TRACK_GPU_GIB = {name: track.gpu_gib for name, track in TRACKS.items()}


def tracks_text() -> str:
    """'4090 (24 GiB) or A100 (40 GiB)': for help texts and messages."""
    names = [f"{track.name} ({track.gpu_gib} GiB)" for track in TRACKS.values()]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def stages_text() -> str:
    """'open (300 min) or closed (600 min)'."""
    return " or ".join(f"{stage.name} ({stage.minutes} min)" for stage in STAGES.values())
