"""The submission's inference server: HELM's HTTP protocol around one merged causal LM.

Run it from the submission folder (main.py, engine.py, prefix_cache.py, api.py and settings.py
side by side):

    MODEL_PATH=/path/to/merged/model uvicorn main:app --host 0.0.0.0 --port 80

Environment (read by settings.py):
    MODEL_PATH        Hugging Face-format causal LM + tokenizer folder (required)
    DEVICE            auto (CUDA when present, else CPU) | cpu | cuda | cuda:N        [auto]
    DTYPE             auto (bfloat16, or float16 without bf16 support, on CUDA; float32 on CPU)
                      | bfloat16 | float16 | float32                                    [auto]
    LOAD_IN_4BIT      1 loads the weights as bitsandbytes NF4 (memory-tight tracks)      [0]
    MAX_BATCH_SIZE    most sequences decoded together                                  [32]
    MAX_BATCH_TOKENS  most padded tokens (prompt + new) in one batch: bounds KV memory  [8192]
    BATCH_WINDOW_MS   how long an idle worker waits for company before it starts        [5]
    MAX_CONTEXT       context length; default: the model config's max_position_embeddings
    PREFIX_CACHE_MB   device memory for the key/value states of recent prompts, reused by
                      prompts that share a prefix with them (few-shot examples); 0 disables [1024]
    PREFILL_CHUNK     prompt tokens read at a time while other requests decode, taking turns
                      with them; 0 reads every prompt whole                            [512]

The prompt template the model was trained with (prompt_template.json, written by merge.py beside
the weights) wraps every /process prompt, as in training (an echoed prompt's tokens are the
wrapped ones); /tokenize and /decode read HELM's text as it is. The default, `{prompt}`, is HELM's
prompt alone.

Endpoints (api.py): POST /process, /tokenize, /decode; GET /health answers 503 while the model
loads, 200 once it answered a warm-up request, 500 if loading failed. A request the protocol does
not allow gets a 422 naming the field, a body that is not JSON a 400: never a 500.

The model runs in engine.py (continuous batching, shared-prefix reuse, one-by-one retries after
a failed batch: only a request that fails on its own gets a 500). Prompts longer than the context
are cut from the left and the answer says `truncated`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from api import (
    DecodeRequest,
    DecodeResponse,
    ErrorResponse,
    HealthResponse,
    ProcessRequest,
    ProcessResponse,
    TokenizeRequest,
    TokenizeResponse,
    build_response,
)
from engine import Engine, GenerationError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from settings import Settings, read_template

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("server")


def load_engine(settings: Settings) -> Engine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.dtype != "auto":
        dtype = getattr(torch, settings.dtype)
    elif device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    if device == "cpu":
        # Leave a core to the event loop: torch's spinning OpenMP threads on every core starve
        # it, and throughput then drops tenfold at random.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) - 1))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if settings.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    nf4 = " in 4-bit NF4" if settings.load_in_4bit else ""
    log.info("loading %s on %s as %s%s", settings.model_path, device, dtype, nf4)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    model: Any = AutoModelForCausalLM.from_pretrained(settings.model_path, **kwargs)
    if not settings.load_in_4bit:
        model = model.to(device)
    model.eval()
    template = read_template(Path(settings.model_path))
    if template != "{prompt}":
        log.info("prompts are wrapped in the training template %r", template)
    engine = Engine(model, tokenizer, settings, template)
    # A first request before /health says ok: it proves the model runs and warms the kernels.
    warmup = engine.prepare(ProcessRequest(prompt="Hello", max_new_tokens=1))
    engine.run_alone(warmup)
    warmup.future.result(timeout=0)
    log.info("model ready: context %d tokens, device %s", engine.context, engine.device)
    return engine


@dataclass
class _Server:
    """What one app instance knows about its model; lives on app.state.server."""

    engine: Engine | None = None
    error: str | None = None
    stopping: bool = False


def _load_and_serve(server: _Server, settings: Settings | None) -> None:
    # The thread that loads the model also runs it: on CPU a second thread doing torch work
    # keeps its own busy-waiting OpenMP team, and the two teams fight over the cores.
    try:
        server.engine = load_engine(settings or Settings.from_env())
    except Exception as exc:
        log.exception("the model failed to load")
        server.error = f"{type(exc).__name__}: {exc}"
        return
    if not server.stopping:  # else the server shut down while the model was loading
        server.engine.serve_forever()


def _server(request: Request) -> _Server:
    return request.app.state.server  # type: ignore[no-any-return]


def _engine(request: Request) -> Engine:
    server = _server(request)
    if server.error is not None:
        raise HTTPException(500, f"the model failed to load: {server.error}")
    if server.engine is None:
        raise HTTPException(503, "the model is still loading")
    return server.engine


ReadyEngine = Annotated[Engine, Depends(_engine)]
router = APIRouter()
# Every status a POST may answer besides 200 and FastAPI's own 422, for the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not JSON"},
    500: {"model": ErrorResponse, "description": "the model failed to load, or on this request"},
    503: {"model": ErrorResponse, "description": "the model is still loading"},
}


@router.get("/health", response_model=HealthResponse)
async def health(request: Request) -> JSONResponse:
    server = _server(request)
    if server.error is not None:
        body = HealthResponse(status="error", detail=f"the model failed to load: {server.error}")
        return JSONResponse(status_code=500, content=body.model_dump())
    if server.engine is None:
        return JSONResponse(status_code=503, content=HealthResponse(status="loading").model_dump())
    engine = server.engine
    body = HealthResponse(status="ok", model=engine.settings.model_path, device=str(engine.device))
    return JSONResponse(status_code=200, content=body.model_dump())


@router.post("/process", response_model=ProcessResponse, responses=ERRORS)
async def process(body: ProcessRequest, engine: ReadyEngine) -> ProcessResponse:
    started = time.perf_counter()
    job = engine.prepare(body)
    generated = None
    if job.max_new > 0 or body.echo_prompt:
        try:
            generated = await asyncio.wrap_future(engine.submit(job))
        except GenerationError as exc:
            raise HTTPException(500, f"generation failed: {exc}") from None
    return build_response(
        engine.tokenizer, body, job.ids, job.hidden, job.truncated, generated, started
    )


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, engine: ReadyEngine) -> TokenizeResponse:
    started = time.perf_counter()
    tokens = engine.encode(body.text)
    if body.truncation and body.max_length is not None:
        tokens = tokens[: body.max_length]
    return TokenizeResponse(tokens=tokens, request_time=time.perf_counter() - started)


@router.post("/decode", response_model=DecodeResponse, responses=ERRORS)
async def decode(body: DecodeRequest, engine: ReadyEngine) -> DecodeResponse:
    started = time.perf_counter()
    vocab = len(engine.tokenizer)
    unknown = [i for i, token in enumerate(body.tokens) if token >= vocab]
    if unknown:
        message = f"token id {body.tokens[unknown[0]]} is outside the vocabulary (0..{vocab - 1})"
        loc = ("body", "tokens", unknown[0])
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": message}])
    text = engine.tokenizer.decode(body.tokens, clean_up_tokenization_spaces=False)
    return DecodeResponse(text=text, request_time=time.perf_counter() - started)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field (400 for a body that is not JSON); the input is not echoed back:
    it may be huge, or a number JSON cannot write (Infinity), which made FastAPI's own handler
    fail with a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            return JSONResponse(status_code=400, content={"detail": f"invalid JSON: {reason}"})
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse(status_code=500, content={"detail": f"{type(exc).__name__}: {exc}"})


def create_app(settings: Settings | None = None) -> FastAPI:
    """A server with its own model; settings=None reads the environment when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading in a thread lets /health answer 503 (not "connection refused") meanwhile.
        server = app.state.server = _Server()
        worker = threading.Thread(
            target=_load_and_serve, args=(server, settings), name="model", daemon=True
        )
        worker.start()
        yield
        server.stopping = True
        if server.engine is not None:
            server.engine.stop()
        # Torch must not be mid-step in this thread when the interpreter exits; a model still
        # loading is left to the daemon thread.
        worker.join(timeout=60)

    app = FastAPI(title="Submission inference server", lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    return app


app = create_app()
