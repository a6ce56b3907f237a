"""A rendered submission QLoRA-trained on the CPU with the tiny model, as a competitor makes one:
rendered from the templates, a tiny data set, the smoke config (a few steps), Dockerfile.train
built and run with the base model mounted at /base, and the merged weights served from model/.
`harness reproduce` tests (tests/harness/reproduce/test_top.py) and the whole competition
(tests/harness/service/test_competition_docker.py) reproduce such an entry; its reproduction
mounts the same base (`--mount BASE:/base`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.infra.docker import build
from harness.submission.render import render_submission, smoke_config, use_weights
from harness.submission.tiny_model import write_tiny_dataset
from tests.conftest import TEST_LABELS


def readable_base(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model that the images' user (uid 1000) can read, to mount at /base."""
    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    for path in [base, *base.iterdir()]:
        path.chmod(0o755)
    return base


def trained_submission(
    folder: Path, base: Path, base_image: str, docker_client: Any, work: Path
) -> Path:
    """Render a 4090 submission into `folder` (its name the entry's) and train it; `work` holds
    the training's build log (NAME-train.log) and output (NAME-out/: merged/ is the model the
    submission serves)."""
    submission = render_submission("4090", folder.name, folder).path
    write_tiny_dataset(submission / "data" / "train.jsonl")
    smoke_config(submission / "config.yaml", base_model="/base", dataset="data/train.jsonl")
    built = build(
        submission, tag=f"harness-test/{folder.name}-train:latest",
        log_path=work / f"{folder.name}-train.log", dockerfile=submission / "Dockerfile.train",
        build_args={"BASE_IMAGE": base_image}, labels=TEST_LABELS, timeout=1800,
    )  # fmt: skip
    assert built.ok, built.log_path.read_text()[-3000:]
    out = work / f"{folder.name}-out"
    out.mkdir()
    out.chmod(0o777)
    docker_client.containers.run(
        built.image, remove=True, labels=TEST_LABELS,
        volumes={str(base): {"bind": "/base", "mode": "ro"}, str(out): {"bind": "/app/out"}},
    )  # fmt: skip
    use_weights(submission, out / "merged")
    return submission
