"""The GPU figures of the server and the training, measured: one JSON report in at most 8 minutes.

    make gpu-check                                  (on a machine with a CUDA GPU)
    .venv/bin/python benchmarks/gpu_check.py [--out results/gpu_check.json] [--budget-s 480]
    .venv/bin/python benchmarks/gpu_check.py --tiny (the same code paths on CPU: the suite runs it)

Nothing is downloaded: a random-weight model of Mistral-7B's exact shape is built on the GPU and
saved (the tiny random model's tokenizer beside it; throughput does not depend on the weights).
Sections, each a key of the report (`{"skipped": why}` or `{"error": ...}` when it could not run):

- device: the GPU's name, memory, and memory bandwidth from a table of known GPUs.
- serve: requests/s, p50/p99 of our server and the naive one on bench_serve.py's HELM-like
  workload at 8 and 32 concurrent clients (bf16).
- decode: our server's single-stream greedy decode tokens/s in bf16 over HTTP, and the fraction
  of the bandwidth limit (every weight read once per token) that is.
- serve_4bit: the server with LOAD_IN_4BIT=1: GPU memory at its peak (NVML, the device's use less
  what it used before), decode tokens/s.
- train: the QLoRA 4090 preset (templates/configs/4090.yaml, packed to full-length sequences) for
  a few steps: torch's peak allocation and tokens/s against templates/train/memory.py's estimate.
- merge: merge.py on that adapter: the merged bf16 model's largest logit difference from the
  adapter model, the figure `merge.tolerance` should be set from.
- nvml: whether NVML sampling (harness.run.failures.GpuMemorySampler, what `harness run` uses) sees
  the memory a server process holds.

The server runs with MAX_CONTEXT=4096: Mistral-7B's 4096-token sliding window then covers the whole
context, as on HELM's runs, and requests batch and share prefixes. With --tiny every section runs
on CPU with the tiny model, except what needs CUDA (bandwidth, NVML), which records why not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from bench_serve import NAIVE, OURS, Result, bench_model, drive, percentile, running, workload

from harness.run.failures import GpuMemorySampler

REPO = Path(__file__).resolve().parents[1]
TRAIN_DIR = REPO / "templates" / "train"
GIB = 1024**3
# Memory bandwidth in TB/s by device name (torch.cuda.get_device_name), most specific first.
BANDWIDTH_TB_S = [
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),  # SXM (HBM3)
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),  # 40 GB
    ("L40", 0.864),  # L40 and L40S
    ("RTX 4090", 1.008),
    ("RTX 3090", 0.936),
    ("A10G", 0.6),
    ("L4", 0.3),
]
MISTRAL_7B: dict[str, Any] = {  # mistralai/Mistral-7B-v0.1's config.json, less the token ids
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}
SERVER_ENV = {"MAX_CONTEXT": "4096"}
DECODE_TOKENS = {"gpu": 256, "tiny": 32}
REQUESTS = {"gpu": 320, "tiny": 24}
CLIENTS = (8, 32)


class Check:
    """The run's settings, its clock and its report."""

    def __init__(self, tiny: bool, work: Path, budget_s: float) -> None:
        import torch

        self.tiny, self.work = tiny, work
        self.cuda = torch.cuda.is_available() and not tiny
        self.size = "tiny" if tiny else "gpu"
        self.deadline = time.monotonic() + budget_s
        self.report: dict[str, Any] = {"mode": "tiny (CPU)" if tiny else "gpu"}
        self.model_dir = work / "model"

    def section(self, name: str, run: Callable[[], dict[str, Any]], *, needs_s: float = 0) -> None:
        """Run one section into the report; a failure is recorded and the next section runs."""
        left = self.deadline - time.monotonic()
        if left < needs_s:
            self.report[name] = {
                "skipped": f"{left:.0f} s of the budget left, {needs_s:.0f} needed"
            }
            return
        started = time.monotonic()
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        try:
            result = run()
        except Exception as exc:  # a broken section must not cost the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        self.report[name] = result


# ---- the sections ----


def device(check: Check) -> dict[str, Any]:
    import torch

    if not check.cuda:
        return {"name": "cpu", "bandwidth": {"skipped": "no CUDA device"}}
    name = torch.cuda.get_device_name(0)
    known = bandwidth_tb_s(name)
    return {
        "name": name,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1),
        "bandwidth_tb_s": known if known else {"skipped": f"{name!r} is not in the table"},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def bandwidth_tb_s(device_name: str) -> float | None:
    return next((tb for key, tb in BANDWIDTH_TB_S if key in device_name), None)


def build_model(check: Check) -> dict[str, Any]:
    """Mistral-7B's shape with random bf16 weights on the GPU (the tiny Mistral with --tiny)."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tiny_dir = bench_model(check.work / "tiny", arch="mistral")
    if check.tiny:
        check.model_dir = tiny_dir
    else:
        tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
        ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = MistralForCausalLM._from_config(
                MistralConfig(**MISTRAL_7B, **ids), dtype=torch.bfloat16
            )
        model.save_pretrained(check.model_dir, safe_serialization=True)
        tokenizer.save_pretrained(check.model_dir)
        del model
        torch.cuda.empty_cache()
    config = json.loads((check.model_dir / "config.json").read_text())
    params = _parameters(config)
    check.report["model"] = {
        "shape": {k: config[k] for k in MISTRAL_7B if k in config},
        "parameters": params,
        "bf16_gib": round(params * 2 / GIB, 2),
    }
    return {"dir": str(check.model_dir)}


def _parameters(config: dict[str, Any]) -> int:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    layers = config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    attention = 2 * hidden * hidden + 2 * hidden * kv
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    return int(layers * per_layer + 2 * config["vocab_size"] * hidden + hidden)


def _decode_tokens_per_s(url: str, tokens: int) -> float:
    body = {"prompt": "The capital of France is", "temperature": 0, "max_new_tokens": tokens}
    body["min_new_tokens"] = tokens
    seconds: list[float] = []
    for _ in range(2):  # the first pays one-off costs
        answer = httpx.post(f"{url}/process", json=body, timeout=600).raise_for_status().json()
        assert len(answer["tokens"]) == tokens, answer["tokens"]
        seconds.append(answer["request_time"])
    return tokens / seconds[-1]


def _sampler(check: Check) -> tuple[GpuMemorySampler | None, str]:
    if not check.cuda:
        return None, "no CUDA device"
    return GpuMemorySampler.from_nvml(0, interval_s=0.1)


def _baseline(sampler: GpuMemorySampler | None) -> int:
    """The device's use before a measured process starts; its peak then only grows from it."""
    if sampler is None:
        return 0
    sampler.sample()
    return sampler.peak_bytes


def decode(check: Check, url: str) -> dict[str, Any]:
    """Single-stream decode speed of a running bf16 server, and its share of the bandwidth."""
    rate = _decode_tokens_per_s(url, DECODE_TOKENS[check.size])
    result: dict[str, Any] = {
        "new_tokens": DECODE_TOKENS[check.size],
        "tokens_per_s": round(rate, 1),
    }
    bandwidth = check.report["device"].get("bandwidth_tb_s")
    if isinstance(bandwidth, float):
        weight_bytes = check.report["model"]["parameters"] * 2
        limit = bandwidth * 1e12 / weight_bytes
        result |= {"bandwidth_limit_tokens_per_s": round(limit, 1)}
        result |= {"fraction_of_bandwidth_limit": round(rate / limit, 3)}
    else:
        result["fraction_of_bandwidth_limit"] = {"skipped": "no known bandwidth (see device)"}
    return result


def serve(check: Check) -> dict[str, Any]:
    """Naive and ours on the HELM-like workload; ours also gives decode and NVML's figures."""
    requests = workload(REQUESTS[check.size])
    result: dict[str, Any] = {"requests": len(requests)}
    sampler, why = _sampler(check)
    for name, (folder, target, env) in {"naive": NAIVE, "ours": OURS}.items():
        before = _baseline(sampler)
        with running(folder, target, check.model_dir, {**env, **SERVER_ENV}) as (url, _):
            if name == "ours":
                if sampler:
                    sampler.start()
                check.report["decode"] = decode(check, url)
            drive(url, requests[:4], 4, Result())  # warm-up
            for clients in CLIENTS:
                measured = Result()
                drive(url, requests, clients, measured)
                result[f"{name}_{clients}_clients"] = {
                    "requests_per_s": round(len(requests) / measured.seconds, 2),
                    "p50_ms": round(1000 * percentile(measured.latencies, 50)),
                    "p99_ms": round(1000 * percentile(measured.latencies, 99)),
                }
    for clients in CLIENTS:
        ours, naive = (
            result[f"{n}_{clients}_clients"]["requests_per_s"] for n in ("ours", "naive")
        )
        result[f"speedup_{clients}_clients"] = round(ours / naive, 2)
    if sampler:
        sampler.stop()
        held = (sampler.peak_bytes - before) / GIB
        check.report["nvml"] = {
            "sampler": why,
            "samples": sampler.samples,
            "server_gib": round(held, 2),
            # The bf16 server holds at least its weights; NVML sampling that sees it works.
            "sees_the_server": held >= 0.9 * check.report["model"]["bf16_gib"],
        }
    else:
        check.report["nvml"] = {"skipped": why}
    return result


def serve_4bit(check: Check) -> dict[str, Any]:
    from bench_serve import peak_rss_mib

    sampler, why = _sampler(check)
    before = _baseline(sampler)
    env = {**SERVER_ENV, "LOAD_IN_4BIT": "1"}
    with running(*OURS[:2], check.model_dir, env) as (url, pid):
        if sampler:
            sampler.start()
        rate = _decode_tokens_per_s(url, DECODE_TOKENS[check.size])
        drive(url, workload(REQUESTS[check.size] // 4), 8, Result())
        if sampler:
            sampler.stop()
        rss = peak_rss_mib(pid)
    result: dict[str, Any] = {"decode_tokens_per_s": round(rate, 1)}
    result["server_peak_rss_gib"] = round(rss / 1024, 2)
    if sampler:
        result["gpu_peak_gib"] = round((sampler.peak_bytes - before) / GIB, 2)
    else:
        result["gpu_peak_gib"] = {"skipped": why}
    return result


def train_config(check: Check) -> Path:
    """The 4090 preset on the local model, a few steps of full-length (packed) sequences."""
    config = yaml.safe_load((REPO / "templates" / "configs" / "4090.yaml").read_text())
    data = check.work / "train.jsonl"
    words = ["the", "capital", "of", "france", "is", "paris", "and", "a", "model", "answers"]
    rows = [
        {
            "instruction": f"question {i} : {' '.join(words[i % 7 :])} ?",
            "output": " ".join(words * 6),
        }
        for i in range(600 if not check.tiny else 60)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config |= {
        "base_model": str(check.model_dir),
        "revision": None,
        "datasets": [{"source": str(data), "format": "alpaca"}],
        "curation": {"dedup": False, "near_dup_threshold": None},  # the rows are alike on purpose
        "packing": True,  # every sequence max_seq_len long, as memory.py assumes
        "max_steps": 3,
        "gradient_accumulation_steps": 2,
        "time_budget": None,
        "save_steps": 10_000,
        "logging_steps": 1,
        "output_dir": str(check.work / "train"),
    }
    config["merge"] |= {"output_dir": str(check.work / "merged"), "tolerance": 1e9}
    if check.tiny:  # CPU: float32 compute, short sequences; paged optimizers need CUDA
        config["quantization"]["compute_dtype"] = "float32"
        config |= {"max_seq_len": 128, "optimizer": "adamw_torch"}
    path = check.work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_script(script: str, config: Path, sampler: GpuMemorySampler | None) -> str:
    if sampler:
        sampler.start()
    try:
        result = subprocess.run(
            [sys.executable, script, "--config", str(config)],
            cwd=TRAIN_DIR,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        if sampler:
            sampler.stop()
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed ({result.returncode}): {result.stderr[-1500:]}")
    return result.stdout


def train(check: Check) -> dict[str, Any]:
    sys.path.insert(0, str(TRAIN_DIR))
    import memory
    from config import load_config

    path = train_config(check)
    config = load_config(path)
    shape = memory.ModelShape.from_config(json.loads((check.model_dir / "config.json").read_text()))
    estimate = memory.estimate(shape, config)
    sampler, why = _sampler(check)
    before = _baseline(sampler)
    _run_script("train.py", path, sampler)
    summary = json.loads((check.work / "train" / "train_summary.json").read_text())
    # torch's peak allocation is the estimate less the allocator's slack and the CUDA context.
    allocated = estimate.total - estimate.parts["allocator fragmentation"]
    allocated -= estimate.parts["CUDA context"]
    measured = summary["peak_memory_gib"]
    result: dict[str, Any] = {
        "preset": "4090",
        "steps": summary["global_step"],
        "tokens_per_s": summary["tokens_per_s"],
        "estimate_gib": round(estimate.total / GIB, 2),
        "estimate_allocated_gib": round(allocated / GIB, 2),
        "estimate_parts_gib": {k: round(v / GIB, 3) for k, v in estimate.parts.items()},
    }
    if check.cuda:
        result["peak_allocated_gib"] = measured
        result["allocated_vs_estimate"] = round(measured / (allocated / GIB), 3)
    else:
        result["peak_rss_gib"] = measured  # a CPU process's memory: no match for the estimate
        result["allocated_vs_estimate"] = {"skipped": "no CUDA device"}
    if sampler:
        device_peak = (sampler.peak_bytes - before) / GIB
        result["nvml_peak_gib"] = round(device_peak, 2)
        result["nvml_vs_estimate"] = round(device_peak / (estimate.total / GIB), 3)
    else:
        result["nvml_peak_gib"] = {"skipped": why}
    return result


def merge(check: Check) -> dict[str, Any]:
    out = _run_script("merge.py", check.work / "train.yaml", None)
    found = re.search(r"largest logit difference (\S+)", out)
    if not found:
        raise RuntimeError(f"merge.py did not print its check: {out[-1000:]}")
    return {"dtype": "bfloat16", "largest_logit_difference": float(found.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU and the tiny model (for CI)")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting sections after")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        check = Check(args.tiny, Path(scratch), args.budget_s)
        import torch

        if not check.cuda and not args.tiny:
            sys.exit("no CUDA device: run with --tiny for the CPU version of this check")
        check.section("device", lambda: device(check))
        check.section("build_model", lambda: build_model(check))
        if "error" in check.report["build_model"]:
            check.report["aborted"] = "no model to measure"
        else:
            check.section("serve", lambda: serve(check), needs_s=90)
            check.section("serve_4bit", lambda: serve_4bit(check), needs_s=45)
            check.section("train", lambda: train(check), needs_s=90)
            check.section("merge", lambda: merge(check), needs_s=60)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(check.report, indent=2) + "\n")
    print(json.dumps(check.report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
