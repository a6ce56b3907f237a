"""Render a complete, hash-pinned, buildable submission folder from templates/.

The folder needs nothing from this toolkit: the server, training and merge scripts are copied
verbatim, the image requirements are the hash-pinned locks, and the Dockerfiles are rendered from
Jinja templates with the track's preset.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from harness.competition import TRACK_NAMES
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
LOCKFILES = REPO / "lockfiles"
# python:3.11-slim-bookworm, pinned by digest: a tag can move under a submission, a digest cannot.
DEFAULT_BASE_IMAGE = (
    "python:3.11-slim-bookworm"
    "@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
WEIGHTS_LOCK = "weights.lock.json"  # the Dockerfile's weights-url stage downloads what it lists
# Plain HTTP only to this machine (tests, a local mirror): elsewhere the weights travel over TLS.
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


# What `smoke_config` changes in a preset: a few optimizer steps on the CPU, checked exactly.
_SMOKE = {
    "revision": None,
    "max_steps": 3,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_len": 128,
    "warmup_steps": 0,
    "save_steps": 2,
    "logging_steps": 1,
    "gradient_checkpointing": False,
    "optimizer": "adamw_torch",
    "time_budget": "20m",
}


@dataclass(frozen=True)
class Submission:
    path: Path
    track: str
    name: str
    files: tuple[str, ...]


def _preset(track: str) -> dict[str, object]:
    preset = yaml.safe_load((TEMPLATES / "configs" / f"{track}.yaml").read_text())
    if not isinstance(preset, dict):
        raise ConfigError(f"templates/configs/{track}.yaml is not a mapping")
    return preset


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _copy_model(model_dir: Path, dest: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    shutil.copytree(model_dir, dest, dirs_exist_ok=True)


def render_submission(
    track: str,
    name: str,
    out_dir: Path,
    *,
    force: bool = False,
    reset_config: bool = False,
    model_dir: Path | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
) -> Submission:
    """Write the submission folder `out_dir` for `track`; returns what was written.

    An existing folder is refused unless `force`: then the rendered files are overwritten and
    everything else there (model/, data/, out/, weights.lock.json) is left alone, as are an edited
    config.yaml (unless `reset_config`) and the Dockerfile's default WEIGHTS. `model_dir`, a
    merged model, is copied into model/ and becomes the inference image's default weights.
    """
    if track not in TRACK_NAMES:
        raise ConfigError(f"unknown track {track!r}; choose one of {', '.join(TRACK_NAMES)}")
    if not _NAME.match(name):
        raise ConfigError(
            f"name {name!r} must be lowercase letters, digits, '.', '_' or '-' (a Docker tag)"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"{out_dir} already exists and is not empty; pass --force to overwrite")
    preset = _preset(track)
    out_dir.mkdir(parents=True, exist_ok=True)

    copied: dict[str, Path] = {
        "requirements.txt": LOCKFILES / "serve.txt",
        "requirements-train.txt": LOCKFILES / "train.txt",
        "config.yaml": TEMPLATES / "configs" / f"{track}.yaml",
        "fetch_weights.py": TEMPLATES / "docker" / "fetch_weights.py",
    }
    for folder in ("server", "train"):
        copied |= {p.name: p for p in sorted((TEMPLATES / folder).glob("*.py"))}
    if (out_dir / "config.yaml").exists() and not reset_config:
        del copied["config.yaml"]  # the competitor's own settings
    weights = re.search(r"^ARG WEIGHTS=(\S+)", _read(out_dir / "Dockerfile"), re.MULTILINE)
    for dest, source in copied.items():
        shutil.copyfile(source, out_dir / dest)

    if model_dir is not None:
        _copy_model(model_dir, out_dir / "model")
    for folder in ("model", "data"):
        (out_dir / folder).mkdir(exist_ok=True)
        readme = TEMPLATES / "docker" / f"{folder}-README.md"
        shutil.copyfile(readme, out_dir / folder / "README.md")

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES / "docker"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    context = {
        "name": name,
        "track": track,
        "base_image": base_image,
        "base_model": preset["base_model"],
        "base_revision": preset.get("revision", "main"),
        "default_weights": "local" if model_dir else weights[1] if weights else "hub",
        "train_files": sorted(
            ["config.yaml", *(p.name for p in (TEMPLATES / "train").glob("*.py"))]
        ),
    }
    rendered = {
        "Dockerfile": "Dockerfile.j2",
        "Dockerfile.train": "Dockerfile.train.j2",
        ".dockerignore": "dockerignore.j2",
        ".gitignore": "gitignore.j2",
        "README.md": "README.md.j2",
    }
    for dest, template in rendered.items():
        (out_dir / dest).write_text(env.get_template(template).render(context))
    lock = out_dir / WEIGHTS_LOCK
    if not lock.exists():  # a re-render keeps the weights already locked
        lock.write_text(json.dumps({"files": []}) + "\n")
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    return Submission(out_dir, track, name, tuple(files))


def _default_weights(submission_dir: Path, mode: str) -> None:
    dockerfile = submission_dir / "Dockerfile"
    text = dockerfile.read_text() if dockerfile.is_file() else ""
    if not re.search(rf"^FROM \S+ AS weights-{mode}$", text, re.MULTILINE):
        raise ConfigError(
            f"{dockerfile} is not a rendered inference Dockerfile (no weights-{mode})"
        )
    dockerfile.write_text(re.sub(r"^ARG WEIGHTS=\S*", f"ARG WEIGHTS={mode}", text, flags=re.M))


def use_weights(submission_dir: Path, model_dir: Path) -> None:
    """Make a merged model the one a submission serves: copy it into model/ and make `local` the
    inference Dockerfile's default WEIGHTS, so the organizers' plain `docker build` uses it."""
    _default_weights(submission_dir, "local")
    _copy_model(model_dir, submission_dir / "model")


def lock_weights(submission_dir: Path, model_dir: Path, url_base: str) -> list[dict[str, object]]:
    """Serve a merged model uploaded under `url_base` (its files at the same relative paths):
    write each file's URL, size and sha256 into the submission's weights.lock.json and make `url`
    the Dockerfile's default WEIGHTS; the build downloads and verifies them. Returns the lock's
    entries."""
    parsed = urllib.parse.urlsplit(url_base)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and parsed.hostname in _LOOPBACK):
        raise ConfigError(f"--url-base {url_base!r} must be an https:// URL")
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    entries: list[dict[str, object]] = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        url = url_base.rstrip("/") + "/" + urllib.parse.quote(relative)
        entries.append(
            {
                "path": relative,
                "url": url,
                "size": path.stat().st_size,
                "sha256": digest.hexdigest(),
            }
        )
    _default_weights(submission_dir, "url")
    lock = {"files": entries}
    (submission_dir / WEIGHTS_LOCK).write_text(json.dumps(lock, indent=2) + "\n")
    return entries


def smoke_config(config_path: Path, *, base_model: str, dataset: str) -> None:
    """Shrink a submission's config.yaml to a few QLoRA steps on the CPU: `base_model` (a tiny
    local model) trained on `dataset` (an alpaca JSONL), merged in float32 and checked to 1e-4.
    The tests, the demo and competitors' own smoke runs use it."""
    config = yaml.safe_load(config_path.read_text())
    config.update(_SMOKE, base_model=base_model)
    config["datasets"] = [{"source": dataset, "format": "alpaca", "max_samples": 32}]
    config["quantization"]["compute_dtype"] = "float32"
    config["lora"]["r"] = 8
    config["merge"].update(dtype="float32", device="cpu", tolerance=1e-4)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
