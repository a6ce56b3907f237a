"""The HTTP protocol of the submission server, as pydantic models.

The union of crfm-helm's `HTTPModelClient` / `HTTPModelTokenizer` requests and the competition's
OpenAPI schema (`ProcessRequest`, `TokenizeRequest`, `DecodeRequest`). Every field but `prompt`
(or `text`, `tokens`) is optional and unknown fields are ignored. Types are strict (a bool is not
an int, 0 is not a bool, "3" is not a number), numbers finite and within the ranges below, strings
valid Unicode: anything else is refused with a 422 that names the field, so nothing a client sends
reaches the model in a form that could make it fail. HELM reads only `text`, `logprob`,
`tokens[].text`, `tokens[].logprob` and `request_time` of a /process response; the rest is for
other clients.

Below the models, the token side of /process, which needs a tokenizer but no model: fitting a
prompt into the context and assembling an answer from the ids and log-probabilities main.py's
engine produced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

GREEDY_TEMPERATURE = 1e-5  # HELM sends 1e-7 for temperature 0; at or below this we decode greedily
MAX_TEMPERATURE = 100.0  # flatter than uniform to float precision; keeps logits / T finite
MAX_TOKENS = 1_000_000  # token counts beyond any context (the context caps them anyway)
PIECE_CONTEXT = 4  # preceding tokens decoded with each token: see token_texts
TopList = list[tuple[int, float]]  # (token id, log-probability), best first


def _unicode(value: str) -> str:
    try:  # JSON can carry lone UTF-16 surrogates ("\ud800"); no tokenizer can read them
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode: {exc.reason} at position {exc.start}") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_unicode)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProcessRequest(_Request):
    prompt: Text
    temperature: StrictFloat = Field(
        0.8,
        ge=0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description=f"<= {GREEDY_TEMPERATURE} means greedy decoding",
    )
    num_return_sequences: StrictInt | None = Field(None, ge=1, le=64, description="HELM's name")
    num_samples: StrictInt | None = Field(None, ge=1, le=64, description="the competition's name")
    max_new_tokens: Count = Field(50, description="capped by the context")
    min_new_tokens: Count = Field(0, description="end-of-sequence is not chosen before this")
    top_p: StrictFloat = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt = Field(
        200, ge=0, le=MAX_TOKENS, description="0 (or more than the vocabulary) disables top-k"
    )
    top_k_per_token: StrictInt = Field(1, ge=0, le=100, description="alternatives in top_logprob")
    echo_prompt: StrictBool = False
    stop_sequences: list[Text] = Field(default_factory=list, max_length=64)
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)

    @field_validator("echo_prompt", mode="before")
    @classmethod
    def _null_is_false(cls, value: object) -> object:
        # The competition's schema declares echo_prompt Optional[bool]; its clients send null.
        return False if value is None else value

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(stop == "" for stop in value):
            raise ValueError("an empty stop sequence would stop before the first token")
        return value

    @property
    def num_sequences(self) -> int:
        return self.num_return_sequences or self.num_samples or 1

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


class Token(BaseModel):
    text: str
    logprob: float
    top_logprob: dict[str, float]


class Completion(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float
    finish_reason: str = Field(description="'length', 'stop' (a stop sequence) or 'eos'")


class ProcessResponse(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float
    request_time: float = Field(description="seconds from arrival to answer, queueing included")
    truncated: bool = Field(False, description="the prompt was cut from the left to fit")
    completions: list[Completion] = Field(
        default_factory=list, description="every returned sequence; the first is also top-level"
    )


class TokenizeRequest(_Request):
    text: Text
    truncation: StrictBool = False
    max_length: StrictInt | None = Field(None, ge=1)


class TokenizeResponse(BaseModel):
    tokens: list[int]
    request_time: float


class DecodeRequest(_Request):
    # Strict: "3" or 3.5 are refused rather than coerced into a token id.
    tokens: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1)


class DecodeResponse(BaseModel):
    text: str
    request_time: float


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str
    model: str | None = None
    device: str | None = None
    detail: str | None = None


# ---- the token side of /process: fitting prompts, assembling answers ----


def start_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama/Mistral)."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


def fit_prompt(
    prompt: list[int], start: list[int], empty_start: list[int], max_new_tokens: int, context: int
) -> tuple[list[int], int, int, bool]:
    """Fit the prompt and the new tokens into the context, cutting the prompt from the left.

    The model reads `start` (the tokenizer's BOS, if it adds one) before the prompt, or
    `empty_start` when both are empty: it needs something to condition on. Returns the model's
    input ids, how many of them are not prompt text, the new-token budget, and whether the
    prompt was cut.
    """
    hidden = start or ([] if prompt else empty_start)
    max_new = min(max_new_tokens, context - len(hidden) - 1)
    room = context - len(hidden) - max_new
    truncated = len(prompt) > room
    if truncated:
        prompt = prompt[len(prompt) - room :]
    return hidden + prompt, len(hidden), max_new, truncated


@dataclass
class Sequence:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[TopList] = field(default_factory=list)
    finish: str = "length"


@dataclass
class Generated:
    prompt_logprobs: list[float] = field(default_factory=list)  # for ids[1:], given the ids before
    prompt_top: list[TopList] = field(default_factory=list)
    sequences: list[Sequence] = field(default_factory=list)


def build_response(
    tokenizer: Any,
    request: ProcessRequest,
    ids: list[int],
    hidden: int,
    truncated: bool,
    generated: Generated | None,
    started: float,
) -> ProcessResponse:
    """The answer to `request` whose model input was `ids`, the first `hidden` not prompt text.

    `generated` is None when no model call was needed (no new tokens, no echo).
    """
    prompt_ids = ids[hidden:]
    echo: list[Token] = []
    prompt_text = ""
    if request.echo_prompt:
        # prompt_logprobs[j - 1] belongs to ids[j]; the very first id has no context to score.
        logprobs: list[float] = [0.0] * len(ids)
        tops: list[TopList] = [[] for _ in ids]
        if generated is not None:
            logprobs, tops = [0.0, *generated.prompt_logprobs], [[], *generated.prompt_top]
        echo = make_tokens(tokenizer, prompt_ids, logprobs[hidden:], tops[hidden:], ids[:hidden])
        prompt_text = tokenizer.decode(prompt_ids) if truncated else request.prompt
    sequences = generated.sequences if generated else [Sequence()] * request.num_sequences
    completions = []
    for sequence in sequences:
        new_tokens, text = cut_at_stop(
            make_tokens(tokenizer, sequence.ids, sequence.logprobs, sequence.top, ids),
            tokenizer.decode(sequence.ids, skip_special_tokens=True),
            request.stop_sequences,
        )
        tokens = echo + new_tokens
        completions.append(
            Completion(
                text=prompt_text + text,
                tokens=tokens,
                logprob=sum(t.logprob for t in tokens),
                finish_reason="stop" if len(new_tokens) < len(sequence.ids) else sequence.finish,
            )
        )
    first = completions[0]
    return ProcessResponse(
        text=first.text,
        tokens=first.tokens,
        logprob=first.logprob,
        request_time=time.perf_counter() - started,
        truncated=truncated,
        completions=completions,
    )


def token_texts(tokenizer: Any, ids: list[int], context: list[int]) -> list[str]:
    """Each token's share of the decoded text; the shares add up to decode(ids).

    A token is decoded after a few preceding ones (so sentencepiece's leading spaces come out
    right); a token that ends inside a multi-byte character gets "" and the token that completes
    the character gets all of it.
    """

    def decode(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=True))

    pieces: list[str] = []
    done, pending = list(context[-PIECE_CONTEXT:]), []
    for position, token_id in enumerate(ids):
        pending.append(token_id)
        before, after = decode(done), decode(done + pending)
        if after.endswith("\ufffd") and position < len(ids) - 1:
            pieces.append("")
            continue
        pieces.append(after[len(before) :] if after.startswith(before) else decode(pending))
        done, pending = (done + pending)[-PIECE_CONTEXT:], []
    return pieces


def make_tokens(
    tokenizer: Any, ids: list[int], logprobs: list[float], tops: list[TopList], context: list[int]
) -> list[Token]:
    tokens = []
    for text, logprob, top in zip(
        token_texts(tokenizer, ids, context), logprobs, tops, strict=True
    ):
        alternatives: dict[str, float] = {}
        for alt_id, alt_logprob in top:  # alternatives that decode alike keep the best
            alternatives.setdefault(tokenizer.decode([alt_id]), alt_logprob)
        tokens.append(Token(text=text, logprob=logprob, top_logprob=alternatives))
    return tokens


def cut_at_stop(tokens: list[Token], text: str, stops: list[str]) -> tuple[list[Token], str]:
    """Cut the text before the first stop sequence and keep the tokens that fit in it."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return tokens, text
    kept, length = [], 0
    for token in tokens:
        length += len(token.text)
        if length > cut:
            break
        kept.append(token)
    return kept, text[:cut]
