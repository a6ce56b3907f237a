"""The baseline for bench_serve.py: a server built like the competition's sample submission.

One request at a time (the handler blocks the event loop), plain `generate` with
`output_scores=True`, the full-vocabulary log-softmax of every step stacked, an assert on prompts
that do not fit, no prompt scoring. It speaks enough of the protocol for the benchmark workload:

    MODEL_PATH=/path/to/model uvicorn naive_server:app --port 8081   (from benchmarks/)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from transformers import AutoModelForCausalLM, AutoTokenizer

# The protocol's models are the submission server's own.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "templates" / "server"))
from api import ProcessRequest, ProcessResponse, Token

app = FastAPI(title="Naive baseline server")
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":  # the submission server's CPU thread setting: compare serving, not threads
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))
dtype = torch.bfloat16 if device == "cuda" else torch.float32
tokenizer: Any = AutoTokenizer.from_pretrained(os.environ["MODEL_PATH"])
model: Any = AutoModelForCausalLM.from_pretrained(os.environ["MODEL_PATH"], dtype=dtype)
model = model.to(device)
model.eval()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/process")
async def process(request: ProcessRequest) -> ProcessResponse:
    started = time.perf_counter()
    encoded = tokenizer(request.prompt, return_tensors="pt").to(device)
    prompt_length = encoded["input_ids"].shape[1]
    assert prompt_length + request.max_new_tokens <= model.config.max_position_embeddings
    if request.seed is not None:
        torch.manual_seed(request.seed)
    sampling: dict[str, Any] = {"do_sample": False}
    if not request.greedy:
        sampling = {"do_sample": True, "temperature": request.temperature}
        sampling |= {"top_k": request.top_k, "top_p": request.top_p}
    outputs = model.generate(
        **encoded,
        max_new_tokens=request.max_new_tokens,
        min_new_tokens=request.min_new_tokens,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    generated = outputs.sequences[0, prompt_length:]
    log_probs = torch.stack(outputs.scores, dim=1).log_softmax(-1)[0]
    chosen = log_probs.gather(1, generated[:, None])[:, 0]
    top = log_probs.topk(max(request.top_k_per_token, 1), dim=-1)
    tokens = [
        Token(
            text=tokenizer.decode([token_id]),
            logprob=chosen[i].item(),
            top_logprob={
                tokenizer.decode([alt]): value.item()
                for alt, value in zip(top.indices[i], top.values[i], strict=True)
            },
        )
        for i, token_id in enumerate(generated.tolist())
    ]
    text = tokenizer.decode(generated, skip_special_tokens=True)
    if request.echo_prompt:
        text = request.prompt + text
    return ProcessResponse(
        text=text,
        tokens=tokens,
        logprob=sum(t.logprob for t in tokens),
        request_time=time.perf_counter() - started,
    )
