"""The submission server's engine: one thread owns the model and runs a continuous batch.

main.py (the HTTP side) hands it jobs; it answers them through futures. New requests (the oldest
first, then those needing similar work, within MAX_BATCH_SIZE / MAX_BATCH_TOKENS) join the running
batch between decoding steps, left-padded with attention masks so a batched answer equals the
unbatched one; finished requests are answered and leave at once. The KV cache is kept across
steps; only the logits a response needs are computed, and only the chosen and top_k_per_token
log-probabilities leave the device.

While other requests decode, new prompts are read in chunks of PREFILL_CHUNK tokens (their KV
cache appended chunk by chunk), and reading gets no more of the worker's time than decoding: a chunk
is read only once the decoding rows have had as much time since the last one. Reading newcomers
whole stalled every decoding row for all their prompts once per token it generated, so a long
answer waited for every short request that came and went meanwhile, and the tail latency grew
past a one-request-at-a-time server's. The same work is done, in a fairer order, with about as many
forward passes. With nothing decoding, prompts are read whole.

A prompt starts from the longest prefix of its token ids whose key/value states a recent prompt
left in the prefix cache (prefix_cache.py), so shared few-shot examples are read once.

Robust: when a batch raises (CUDA out of memory, say), memory is freed (the prefix cache too) and
its requests are rerun one by one, so only a request that fails on its own gets an error; the
worker goes on.

Where to change what:
    sampling (temperature, top_p, top_k, seed)        Engine._sample
    when a sequence ends (stop sequences, limits)     Engine._step
    which waiting requests join the batch             Engine._take
    what the prefix cache keeps                       prefix_cache.py
What main.py relies on, the contract to keep when swapping in another engine (vLLM, say):
`prepare(request) -> Job`, `submit(job) -> Future[Generated]`, `run_alone(job)`,
`serve_forever()`, `stop()`, `encode(text)`, and the attributes `tokenizer`, `context`, `device`,
`settings`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from api import Generated, ProcessRequest, Sequence, TopList, fit_prompt, start_ids
from prefix_cache import Entry, PrefixCache
from settings import Settings

log = logging.getLogger("server")

LOGPROB_CHUNK = 512  # prompt positions whose full-vocabulary logits are materialised at once


class GenerationError(RuntimeError):
    """A request failed inside the model; carries only the message (no tensors via traceback)."""


@dataclass(eq=False)  # jobs are told apart by identity: two requests may be alike
class Job:
    """One /process request as the worker sees it."""

    request: ProcessRequest
    ids: list[int]  # what the model reads: hidden start tokens (e.g. BOS) + the kept prompt
    hidden: int  # leading ids that are not part of the prompt text
    max_new: int
    truncated: bool
    future: Future[Generated] = field(default_factory=Future)
    result: Generated = field(default_factory=Generated)  # filled in by the worker
    pending: int = 0  # rows still decoding

    @property
    def rows(self) -> int:
        return self.request.num_sequences


@dataclass
class _Row:
    """One sequence being decoded; a job with num_sequences=n has n rows."""

    job: Job
    sequence: Sequence
    generator: torch.Generator | None
    done: bool = False

    def finish(self, reason: str) -> None:
        self.sequence.finish, self.done = reason, True
        self.job.pending -= 1


@dataclass
class _Batch:
    """The rows being decoded together; line i of every tensor is rows[i]. A batch still reading
    its prompts (see _read) has unread prompt columns and no log-probabilities yet."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor  # while reading: already the mask of the whole prompts
    unread: torch.Tensor  # [rows, columns]: prompt ids still to read, left-padded like the mask
    logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # of each next token
    echoed: list[torch.Tensor] = field(default_factory=list)  # echo lines' states, by chunk

    def jobs(self) -> list[Job]:
        return list(dict.fromkeys(row.job for row in self.rows))

    def release(self) -> None:
        self.rows, self.cache, self.echoed = [], None, []
        self.mask = self.unread = self.logprobs = torch.empty(0)


class Engine:
    def __init__(
        self, model: Any, tokenizer: Any, settings: Settings, template: str = "{prompt}"
    ) -> None:
        self.model = model
        self.template = template
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = next(model.parameters()).device
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.context = settings.max_context or int(model.config.max_position_embeddings)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        self.start_ids = start_ids(tokenizer)
        self.empty_start = [
            next(i for i in (tokenizer.bos_token_id, *self.eos_ids, 0) if i is not None)
        ]
        self.pad_id = next(
            i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None
        )
        self.joinable = self._plain_cache(model.config, self.context)
        # Reused prefixes are spliced into one growing tensor per layer: plain caches only.
        self.prefix = None
        if self.joinable and settings.prefix_cache_mb > 0:
            self.prefix = PrefixCache(int(settings.prefix_cache_mb * 2**20))
        self._queue: queue.Queue[Job | None] = queue.Queue()  # None asks the worker to stop
        self._backlog: list[Job] = []

    @staticmethod
    def _plain_cache(config: Any, context: int) -> bool:
        """Whether each layer caches one growing tensor (batches can then merge); if not, a
        batch runs to its end before the next starts (short sliding windows, hybrid models)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        kinds = {type(layer) for layer in DynamicCache(config=config).layers}
        if kinds <= {DynamicLayer}:
            return True
        # A window no sequence can outgrow (Mistral-7B's 4096 on a 4096 context) is full attention.
        window = getattr(config, "sliding_window", None) or 0
        return kinds <= {DynamicLayer, DynamicSlidingWindowLayer} and window >= context

    # ---- the request side (event loop) ----

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prepare(self, request: ProcessRequest) -> Job:
        # Only generation reads the wrapped prompt; /tokenize counts HELM's text as it is.
        prompt = self.encode(self.template.replace("{prompt}", request.prompt))
        fitted = fit_prompt(
            prompt, self.start_ids, self.empty_start, request.max_new_tokens, self.context
        )
        return Job(request, *fitted)

    def submit(self, job: Job) -> Future[Generated]:
        self._queue.put(job)
        return job.future

    # ---- the worker side (one thread owns the model) ----

    def stop(self) -> None:
        self._queue.put(None)

    def serve_forever(self) -> None:
        """Continuous batching: new requests join the running batch between decoding steps,
        their prompts read a chunk at a time, taking turns with its decoding steps."""
        batch: _Batch | None = None
        reading: _Batch | None = None  # newcomers whose prompts are being read
        owed = 0.0  # seconds of decoding owed to the rows for chunks read while they waited
        while True:
            jobs: list[Job] | None = []
            if reading is None and (batch is None or self.joinable):
                jobs = self._take(batch)
            if jobs is None:
                stranded = self._backlog + (batch.jobs() if batch else [])
                for job in stranded:
                    _fail(job, "the server is shutting down")
                return
            if jobs:
                reading = self._guarded(jobs, partial(self._start, jobs))
            if reading is not None and (batch is None or owed <= 0):
                whole = batch is None  # no row waits: chunks would only add steps
                started = self._clock() if batch else 0.0
                read = partial(self._read, reading, whole)
                reading = self._guarded(reading.jobs(), read, reading)
                if batch is not None:
                    owed += self._clock() - started
                if reading is not None and not reading.unread.shape[1]:
                    batch = reading if batch is None else self._merge(batch, reading)
                    reading = None
            if batch is not None:
                started = self._clock() if owed else 0.0
                advanced = self._guarded(batch.jobs(), partial(self._advance, batch), batch)
                owed = max(0.0, owed - (self._clock() - started)) if owed else 0.0
                batch = advanced if advanced and advanced.rows else None
            if batch is None:
                owed = 0.0

    def _take(self, batch: _Batch | None) -> list[Job] | None:
        """Waiting jobs that fit beside the running batch; None once asked to stop."""
        incoming: list[Job | None] = []
        if batch is None and not self._backlog:
            incoming.append(self._queue.get())
            deadline = time.monotonic() + self.settings.batch_window_ms / 1000
            while (left := deadline - time.monotonic()) > 0:
                try:
                    incoming.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                incoming.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._backlog += [job for job in incoming if job is not None]
        if None in incoming:
            return None
        if not self._backlog:
            return []
        rows, width, most_new = 0, 0, 0
        if batch is not None:
            rows, width = len(batch.rows), batch.mask.shape[1]
            most_new = max(r.job.max_new - len(r.sequence.ids) for r in batch.rows)
        # The oldest job goes first (nothing starves); jobs with as many tokens left to read
        # join it: rows of one prefill all read that many (see _start).
        anchor = self._backlog[0]
        to_read = len(anchor.ids) - self._reusable(anchor)[0]
        others = sorted(
            self._backlog[1:], key=lambda job: abs(len(job.ids) - self._reusable(job)[0] - to_read)
        )
        chosen = []
        for job in [anchor, *others]:
            new_rows, new_width = rows + job.rows, max(width, len(job.ids))
            new_most = max(most_new, job.max_new)
            fits = new_rows <= self.settings.max_batch_size and (
                new_rows * (new_width + new_most) <= self.settings.max_batch_tokens
            )
            if not fits and job is anchor and batch is not None:
                return []  # wait for room rather than let younger jobs overtake
            if fits or job is anchor:  # a lone job over the budget still has to run
                chosen.append(job)
                rows, width, most_new = new_rows, new_width, new_most
        self._backlog = [job for job in self._backlog if job not in chosen]
        return chosen

    def _guarded(
        self, jobs: list[Job], work: Callable[[], _Batch], batch: _Batch | None = None
    ) -> _Batch | None:
        """Run `work`; if it raises, free memory and run each unanswered job on its own."""
        try:
            return work()
        except Exception:  # any failure of the model: OOM, a bad kernel, a bug
            log.exception(
                "generation failed for %d request(s); retrying them one by one", len(jobs)
            )
        # The traceback (and the tensors its frames hold) is gone once the except block ends;
        # the failed batch's cache must go too before the retries need the memory.
        if batch is not None:
            batch.release()
        if self.prefix is not None:
            self.prefix.clear()
        self._free_memory()
        for job in jobs:
            if not job.future.done():
                self.run_alone(job)
        return None

    def run_alone(self, job: Job) -> None:
        """Answer `job` by itself, here: main.py's warm-up, and each job of a batch that failed
        (only a job that fails on its own gets an error)."""
        message = None
        try:
            batch = self._read(self._start([job]), whole=True)
            while batch.rows:
                self._advance(batch)
        except Exception as exc:
            log.exception("generation failed for one request")
            message = f"{type(exc).__name__}: {exc}"
        if message is not None:
            self._free_memory()
            _fail(job, message)

    def _clock(self) -> float:
        if self.device.type == "cuda":  # kernels run after the call returns: wait to time them
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache() if self.joinable else DynamicCache(config=self.model.config)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state  # type: ignore[no-any-return]

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lm_head(hidden).float(), dim=-1)

    @torch.inference_mode()
    def _start(self, jobs: list[Job]) -> _Batch:
        """The rows of new jobs, their prompts left-padded to one width, reused prefixes in place
        in their cache and the rest of their prompts unread."""
        rows: list[_Row] = []
        for job in jobs:
            job.result, job.pending = Generated(), job.rows
            generator = None
            if job.request.seed is not None and not job.request.greedy:
                generator = torch.Generator(device=self.device).manual_seed(job.request.seed)
            for _ in range(job.rows):
                job.result.sequences.append(Sequence())
                rows.append(_Row(job, job.result.sequences[-1], generator))
        # Every row reads the same number of trailing tokens, so a reused prefix sits right
        # before the tokens read now and no padding splits a sequence. Reading fewer tokens
        # than a row could would not save work: the padded batch is that wide anyway.
        hits = {job: self._reusable(job) for job in jobs}
        fresh = max(len(job.ids) - hits[job][0] for job in jobs)
        reused = {job: max(0, len(job.ids) - fresh) for job in jobs}
        width = max(reused.values())
        ids = torch.full((len(rows), fresh), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width + fresh), dtype=torch.long)
        for line, row in enumerate(rows):
            tokens = row.job.ids[reused[row.job] :]
            ids[line, fresh - len(tokens) :] = torch.tensor(tokens)
            mask[line, width + fresh - len(row.job.ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = self._new_cache()
        if width:
            self._seed_cache(
                cache,
                [hits[row.job][1] for row in rows],
                [reused[row.job] for row in rows],
                width,
            )
            if self.prefix is not None:
                self.prefix.reused_tokens += sum(reused[job] for job in jobs)
        return _Batch(rows, cache, mask, ids)

    @torch.inference_mode()
    def _read(self, batch: _Batch, whole: bool) -> _Batch:
        """Read the next PREFILL_CHUNK tokens of the prompts (all of them if `whole`); once the
        last is read, score echoed prompts, keep the prefixes and ready the first tokens.
        A chunk attends to the cache the earlier chunks appended to: the same states as a
        prompt read at once, the sums taken in other shapes (float rounding apart)."""
        left = batch.unread.shape[1]
        chunk = self.settings.prefill_chunk
        columns = left if whole or not chunk else max(1, chunk // len(batch.rows))
        ids, batch.unread = batch.unread[:, :columns], batch.unread[:, columns:]
        read = batch.mask.shape[1] - batch.unread.shape[1]
        hidden = self._forward(ids, batch.mask[:, :read], batch.cache)
        lines = self._first_lines(batch)
        echo = [lines[job] for job in batch.jobs() if job.request.echo_prompt]
        if echo:
            batch.echoed.append(hidden[echo])
        if batch.unread.shape[1]:
            return batch
        if self.prefix is not None:
            for job in batch.jobs():
                line, n = lines[job], len(job.ids)
                states = [
                    (layer.keys[line, :, -n:].clone(), layer.values[line, :, -n:].clone())
                    for layer in batch.cache.layers
                ]
                self.prefix.put(job.ids, states)
        if echo:
            echoed = torch.cat(batch.echoed, dim=1)
            batch.echoed = []
            echoing = [job for job in batch.jobs() if job.request.echo_prompt]
            for job, prompt_states in zip(echoing, echoed, strict=True):
                self._score_prompt(job, prompt_states)
        batch.logprobs = self._logprobs(hidden[:, -1])
        for row in batch.rows:
            if row.job.max_new == 0:
                row.finish("length")
        self._deliver(batch.jobs())
        return batch

    @staticmethod
    def _first_lines(batch: _Batch) -> dict[Job, int]:
        """Each job's first line in the batch."""
        lines: dict[Job, int] = {}
        for line, row in enumerate(batch.rows):
            lines.setdefault(row.job, line)
        return lines

    def _reusable(self, job: Job) -> tuple[int, Entry | None]:
        """How many leading ids of the job the prefix cache holds, and where."""
        if self.prefix is None or job.request.echo_prompt:  # echo scores every prompt position
            return 0, None
        # The last id is always read: its logits choose the first new token.
        return self.prefix.longest(job.ids[:-1])

    @staticmethod
    def _seed_cache(
        cache: Any, entries: list[Entry | None], lengths: list[int], width: int
    ) -> None:
        """Fill a fresh batch cache with each row's reused prefix, right-aligned to `width`.
        The padding is zeros that the mask hides; the entries are copied, never shared."""
        first = next(entry for entry in entries if entry is not None)
        for layer, (some_keys, some_values) in enumerate(first.layers):
            shape = (len(entries), some_keys.shape[0], width, some_keys.shape[-1])
            keys, values = some_keys.new_zeros(shape), some_values.new_zeros(shape)
            for line, (entry, length) in enumerate(zip(entries, lengths, strict=True)):
                if entry is not None and length:
                    cached_keys, cached_values = entry.layers[layer]
                    keys[line, :, width - length :] = cached_keys[:, :length]
                    values[line, :, width - length :] = cached_values[:, :length]
            cache.update(keys, values, layer)

    def _score_prompt(self, job: Job, hidden: torch.Tensor) -> None:
        """Log-probabilities of the prompt's tokens, a chunk of positions at a time."""
        n, k = len(job.ids), job.request.top_k_per_token
        states = hidden[hidden.shape[0] - n : -1]
        targets = torch.tensor(job.ids[1:], device=self.device)
        for start in range(0, n - 1, LOGPROB_CHUNK):
            logprobs = self._logprobs(states[start : start + LOGPROB_CHUNK])
            part = targets[start : start + LOGPROB_CHUNK]
            job.result.prompt_logprobs += logprobs.gather(1, part[:, None])[:, 0].tolist()
            job.result.prompt_top += _top(logprobs, [k] * len(part))

    def _merge(self, batch: _Batch, joining: _Batch) -> _Batch:
        """Stack two batches, left-padding the shorter cache (masked out, so it is never read)."""
        width = max(batch.mask.shape[1], joining.mask.shape[1])

        def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - tensor.shape[dim]
            return F.pad(tensor, (0, 0) * (-1 - dim) + (missing, 0)) if missing else tensor

        for mine, theirs in zip(batch.cache.layers, joining.cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, -2), pad(theirs.keys, -2)])
            mine.values = torch.cat([pad(mine.values, -2), pad(theirs.values, -2)])
        batch.mask = torch.cat([pad(batch.mask, -1), pad(joining.mask, -1)])
        batch.logprobs = torch.cat([batch.logprobs, joining.logprobs])
        batch.rows += joining.rows
        return batch

    @torch.inference_mode()
    def _advance(self, batch: _Batch) -> _Batch:
        """Choose every row's next token, answer finished jobs, run the model one step."""
        self._step(batch.rows, batch.logprobs)
        for row in batch.rows:
            if not row.done and row.job.future.cancelled():  # the client went away
                row.finish("cancelled")
        self._deliver(batch.jobs())
        keep = [line for line, row in enumerate(batch.rows) if not row.done]
        if len(keep) < len(batch.rows):
            batch.rows = [batch.rows[line] for line in keep]
            if not keep:
                return batch
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.mask = batch.mask[index]
            if self.joinable:  # drop the padding columns no remaining row needs
                first = int(batch.mask.any(dim=0).int().argmax())
                batch.mask = batch.mask[:, first:]
                for layer in batch.cache.layers:
                    layer.keys, layer.values = (
                        layer.keys[..., first:, :],
                        layer.values[..., first:, :],
                    )
        last = torch.tensor([[row.sequence.ids[-1]] for row in batch.rows], device=self.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        batch.logprobs = self._logprobs(self._forward(last, batch.mask, batch.cache)[:, -1])
        return batch

    @staticmethod
    def _deliver(jobs: list[Job]) -> None:
        for job in jobs:
            if job.pending == 0 and not job.future.done():
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    job.future.set_result(job.result)

    def _step(self, rows: list[_Row], logprobs: torch.Tensor) -> None:
        """Choose the next token of every unfinished row from its raw-logit log-probabilities."""
        scores = logprobs
        held = [
            i
            for i, row in enumerate(rows)
            if len(row.sequence.ids) < row.job.request.min_new_tokens
        ]
        if held and self.eos_ids:  # min_new_tokens: the end may not be chosen yet
            scores = logprobs.clone()
            scores[torch.tensor(held)[:, None], torch.tensor(self.eos_ids)] = -torch.inf
        choice = scores.argmax(dim=-1)
        sampled = [line for line, row in enumerate(rows) if not row.job.request.greedy]
        if sampled:
            choice[sampled] = self._sample([rows[line] for line in sampled], scores[sampled])
        chosen = logprobs.gather(1, choice[:, None])[:, 0].tolist()
        top = _top(logprobs, [row.job.request.top_k_per_token for row in rows])
        for line, (row, token) in enumerate(zip(rows, choice.tolist(), strict=True)):
            if row.done:
                continue
            if token in self.eos_ids:
                row.finish("eos")
                continue
            row.sequence.ids.append(token)
            row.sequence.logprobs.append(chosen[line])
            row.sequence.top.append(top[line])
            if len(row.sequence.ids) >= row.job.max_new:
                row.finish("length")
            elif row.job.request.stop_sequences:
                text = self.tokenizer.decode(row.sequence.ids, skip_special_tokens=True)
                if any(stop in text for stop in row.job.request.stop_sequences):
                    row.finish("stop")

    def _sample(self, rows: list[_Row], scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and top-p per row, then one draw per row from its own generator."""
        requests = [row.job.request for row in rows]
        temperature = torch.tensor([r.temperature for r in requests], device=scores.device)
        ordered, order = torch.sort(scores / temperature[:, None], dim=-1, descending=True)
        vocab = ordered.shape[-1]
        rank = torch.arange(vocab, device=scores.device)[None, :]
        top_k = torch.tensor([r.top_k or vocab for r in requests], device=scores.device)
        ordered = ordered.masked_fill(rank >= top_k[:, None], -torch.inf)
        probs = torch.softmax(ordered, dim=-1)
        top_p = torch.tensor([r.top_p for r in requests], device=scores.device)
        # A token stays if the tokens ranked above it hold less than top_p of the mass; the best
        # always stays (a top_p that rounds to 0 in float32, such as 5e-324, would drop them all).
        dropped = (probs.cumsum(-1) - probs >= top_p[:, None]) & (rank > 0)
        probs = probs.masked_fill(dropped, 0.0)
        picks = [
            torch.multinomial(probs[i], 1, generator=row.generator) for i, row in enumerate(rows)
        ]
        return order.gather(1, torch.stack(picks))[:, 0]


def _fail(job: Job, message: str) -> None:
    with contextlib.suppress(InvalidStateError):  # answered or cancelled meanwhile
        job.future.set_exception(GenerationError(message))


def _top(logprobs: torch.Tensor, ks: list[int]) -> list[TopList]:
    """The k best (token, log-probability) pairs of each line; one transfer for the batch."""
    k = max(ks, default=0)
    if k == 0:
        return [[] for _ in ks]
    values, indices = logprobs.topk(k, dim=-1)
    pairs = zip(indices.tolist(), values.tolist(), strict=True)
    return [list(zip(i[:n], v[:n], strict=True)) for (i, v), n in zip(pairs, ks, strict=True)]
