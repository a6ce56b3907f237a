"""benchmarks/gpu_check.py: its CPU version (--tiny) runs every section, so the GPU one cannot rot.

No GPU here: what needs CUDA (the bandwidth table's device, NVML, torch's GPU peak) must say so
in the report rather than fail; everything else runs for real on the tiny model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402 (benchmarks/ is a folder of scripts, not a package)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", 4.8),
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H100 PCIe", 2.0),
        ("NVIDIA A100-SXM4-40GB", 1.555),
        ("NVIDIA A100-SXM4-80GB", 2.039),
        ("NVIDIA GeForce RTX 4090", 1.008),
        ("NVIDIA L40S", 0.864),
        ("NVIDIA L4", 0.3),
        ("NVIDIA Tesla T4", None),
    ],
)
def test_bandwidth_by_device_name(name: str, expected: float | None) -> None:
    assert gpu_check.bandwidth_tb_s(name) == expected


def test_the_tiny_check_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for section in ("device", "build_model", "serve", "decode", "serve_4bit", "train", "merge"):
        assert "error" not in report[section] and "skipped" not in report[section], report[section]
    assert report["model"]["parameters"] > 0
    assert report["decode"]["tokens_per_s"] > 0
    for clients in gpu_check.CLIENTS:
        for server in ("naive", "ours"):
            figures = report["serve"][f"{server}_{clients}_clients"]
            assert figures["requests_per_s"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
        rates = [
            report["serve"][f"{s}_{clients}_clients"]["requests_per_s"] for s in ("ours", "naive")
        ]
        assert report["serve"][f"speedup_{clients}_clients"] == pytest.approx(
            rates[0] / rates[1], abs=0.01
        )
    assert report["serve_4bit"]["decode_tokens_per_s"] > 0
    train = report["train"]
    assert train["steps"] == 3 and train["tokens_per_s"] > 0 and train["estimate_gib"] > 0
    assert 0 <= report["merge"]["largest_logit_difference"] < 0.5
    assert math.isfinite(report["merge"]["largest_logit_difference"])
    # Only what needs CUDA is skipped, each with its reason.
    cuda_only = [
        report["device"]["bandwidth"],
        report["decode"]["fraction_of_bandwidth_limit"],
        report["nvml"],
        report["serve_4bit"]["gpu_peak_gib"],
        train["allocated_vs_estimate"],
        train["nvml_peak_gib"],
    ]
    assert all("skipped" in skip for skip in cuda_only), cuda_only
