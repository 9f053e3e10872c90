"""A teacher pool for thousands of API calls per step, behind omniopd's teacher interface.

    pool = TeacherPool(["openai:gpt-4o-mini", "openai:claude-sonnet-4-5@https://api.anthropic.com/v1/@ANTHROPIC_API_KEY"],
                       concurrency=16, cache_path="runs/x/teacher_cache.sqlite")
    pool.continuations(prefixes, n=4, max_tokens=16, draw="seed 0 step 12")   # what omniopd.teacher_rollouts calls

Everything a step asks for goes out on one asyncio event loop, at most `concurrency` requests
in flight, within a rate limit in requests and tokens per minute. A fork's M samples from one
teacher are one request (`n`), so its prefix is sent and billed once; an endpoint that refuses
`n` or returns fewer choices gets one request per sample from then on (said once). A rollout's
forks, whose prefixes are nested, go to each teacher in ascending order, one after another, so
a server's prefix cache can reuse the shared part; rollouts and teachers go concurrently. A request that fails (timeout, 429, 5xx, malformed JSON,
an empty text cut at the token limit) is retried with jittered exponential backoff, waiting
at least as long as the server's Retry-After; one that still fails is skipped and counted,
never raised. A rejected API key or an unknown model stops the run with one line instead.

Every answer is written to an SQLite cache the moment it arrives, keyed by teacher, the exact
request sent (prompt template included), the draw (seed and step) and the sample index: a
resumed run gets back every answer it paid for, while a new step or seed gets fresh samples
even for a prefix seen before (the votes of step 6 assume independent samples). Identical
requests within one call are sent once.
Several teachers pool their answers: a fork gets M from each, and the Dirichlet-Multinomial
step counts all their votes. The pool meters requests, prompt tokens (and those the server
served from its cache), completion tokens, and dollars given prices per million tokens.
"""

import asyncio
import email.utils
import hashlib
import json
import math
import os
import random
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omniopd_lib import common
from omniopd_lib import teachers
from omniopd_lib.common import OmniOPDError


@dataclass(frozen=True)
class Endpoint:
    """One teacher: openai:MODEL, optionally @BASE_URL and @KEY_ENV (defaults from the command line)."""
    model: str
    base_url: str
    api_key_env: str

    @classmethod
    def parse(cls, spec: str, base_url="", api_key_env="OPENAI_API_KEY"):
        if not spec.startswith("openai:"):
            raise OmniOPDError(f"the teacher pool serves openai:MODEL[@BASE_URL[@KEY_ENV]] teachers, not '{spec}'")
        model, *rest = spec.removeprefix("openai:").split("@")
        if not model or len(rest) > 2:
            raise OmniOPDError(f"cannot read teacher '{spec}': write openai:MODEL[@BASE_URL[@KEY_ENV]]")
        return cls(model, rest[0] if rest else base_url, rest[1] if len(rest) > 1 else api_key_env)

    def name(self) -> str:
        return f"{self.model}@{self.base_url or 'default'}"


class AnswerCache:
    """Teacher answers on disk (SQLite), one row per (teacher, request, draw, sample index)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the pool answers on omniopd's teacher thread (InFlight), one call at a time
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT, "
                        "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")
        self.db.commit()

    @staticmethod
    def key(teacher: str, request: dict, draw: str, sample: int) -> str:
        """request: the exact body sent (messages or prompt, max_tokens, temperature)."""
        fields = [teacher, request, draw, sample]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    def get(self, key):
        return self.db.execute("SELECT text, prompt_tokens, completion_tokens FROM answers WHERE key = ?",
                               (key,)).fetchone()

    def put(self, key, text, prompt_tokens, completion_tokens):
        """Committed at once: an answer that was paid for survives a crash one line later."""
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                        (key, text, prompt_tokens, completion_tokens, time.time()))
        self.db.commit()

    def __len__(self):
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


class RateLimiter:
    """Token buckets for requests per minute and tokens per minute (0 = no limit), refilled continuously."""

    def __init__(self, requests_per_minute=0, tokens_per_minute=0, burst_seconds=10.0):
        self.limits = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        # a bucket holds burst_seconds of budget: requests are paced, not fired a minute's worth at once
        self.capacity = {name: limit * burst_seconds / 60 for name, limit in self.limits.items()}
        self.available = dict(self.capacity)
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int):
        """Wait until one request of about `tokens` tokens fits in both budgets, then spend it."""
        need = {"requests": 1, "tokens": tokens}
        async with self.lock:  # first come, first served
            while True:
                now = time.monotonic()
                for name, limit in self.limits.items():
                    if limit:
                        self.available[name] = min(self.capacity[name],
                                                   self.available[name] + limit * (now - self.updated) / 60)
                self.updated = now
                # a request larger than the bucket waits for a full bucket, then goes
                fits = {n: min(need[n], self.capacity[n]) for n in need}
                short = [(fits[n] - self.available[n]) * 60 / limit
                         for n, limit in self.limits.items() if limit and self.available[n] < fits[n]]
                if not short:
                    for name, limit in self.limits.items():
                        if limit:
                            self.available[name] -= need[name]
                    return
                await asyncio.sleep(max(short))


def retry_after_seconds(error) -> float | None:
    """The server's Retry-After (seconds or an HTTP date; also retry-after-ms), if the error carries one that
    reads as a finite number of seconds; anything else ("soon", NaN, inf, a bad date) is None: the normal backoff."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value) if scale == 1.0 else None
            except (TypeError, ValueError, IndexError):
                when = None
            seconds = when.timestamp() - time.time() if when and when.tzinfo else None
        if seconds is not None and math.isfinite(seconds):
            return max(0.0, seconds)
    return None


class TeacherPool(teachers.Teacher):
    """Several OpenAI-compatible teachers behind omniopd's `continuations(prefixes, n, max_tokens)`."""
    overlaps = True

    def __init__(self, teachers, base_url="", api_key_env="OPENAI_API_KEY", mode="auto", temperature=1.0,
                 timeout=60.0, retries=4, concurrency=16, requests_per_minute=0, tokens_per_minute=0,
                 cache_path=None, price_per_million=(0.0, 0.0), backoff=0.5, max_backoff=30.0, reasoning_effort=""):
        import openai
        self.endpoints = [Endpoint.parse(t, base_url, api_key_env) for t in teachers]
        self.answers_per_sample = len(self.endpoints)   # every teacher answers each sample
        self.loop = asyncio.new_event_loop()
        self.clients = {}
        for endpoint in self.endpoints:
            api_key = os.environ.get(endpoint.api_key_env)
            if not api_key:
                raise OmniOPDError(f"teacher API key missing: set the environment variable {endpoint.api_key_env}")
            # our own retries below (jitter, Retry-After, counting), so the client makes one attempt
            self.clients[endpoint] = openai.AsyncOpenAI(api_key=api_key, base_url=endpoint.base_url or None,
                                                        timeout=timeout, max_retries=0)
        self.mode = "chat" if mode == "auto" else mode
        self.reasoning_effort = reasoning_effort
        self.temperature, self.retries, self.concurrency, self.timeout = temperature, retries, concurrency, timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self.price_per_million = price_per_million
        self.cache = AnswerCache(cache_path) if cache_path else None
        self.limiter_settings = (requests_per_minute, tokens_per_minute)
        # the meter: requests sent over HTTP, answers taken from the cache, requests skipped after all retries
        self.calls = self.cached = self.failures = self.retried = 0
        self.tokens = self.prompt_tokens = self.cached_tokens = 0
        self.singles_only = set()   # endpoints that refused or ignored `n`: one request per sample
        self.in_flight = self.max_in_flight = 0

    @property
    def dollars(self) -> float:
        return teachers.dollars(self.price_per_million, self.prompt_tokens, self.cached_tokens, self.tokens)

    def meter(self) -> dict:
        # requests: HTTP requests sent, retries included, as OpenAITeacher counts them (here `calls` is the same)
        return {"calls": self.calls, "requests": self.calls, "cached": self.cached, "failures": self.failures,
                "retried": self.retried,
                "tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "dollars": self.dollars}

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        """n continuations of each prefix from every teacher (n × teachers answers per prefix, pooled);
        None for a prefix that got no usable answer at all. draw names the call (omniopd.teacher_rollouts);
        rows: each prefix's dataset row, for {question} and {answer} in a --teacher-prompt. A rollout's nested
        prefixes (consecutive, ascending, as omniopd passes them) go to each teacher one after another, where its
        prefix cache can reuse the shared part; everything else at once."""
        if not prefixes:
            return []
        rows = rows or [None] * len(prefixes)
        template = teachers.teacher_template(self)
        messages = [teachers.teacher_message(template, p, row) for p, row in zip(prefixes, rows)]
        answers = self.loop.run_until_complete(
            self.ask_all(messages, teachers.nested_chains(prefixes, rows), n, max_tokens, draw))
        return [[a for a in row if a is not None] or None for row in answers]

    async def ask_all(self, messages, chains, n, max_tokens, draw):
        """Every message's n samples from every teacher: each chain of nested messages in order, the chains and
        the teachers concurrently; identical requests within the call share one answer."""
        if not hasattr(self, "limiter"):  # asyncio objects belong to the loop that first uses them
            self.limiter = RateLimiter(*self.limiter_settings)
            self.slots = asyncio.Semaphore(self.concurrency)
        groups, answers = {}, [[[]] * len(self.endpoints) for _ in messages]

        async def samples(endpoint, message):
            request = self.request_body(endpoint, message, max_tokens)
            keys = [AnswerCache.key(endpoint.name(), request, draw, sample) for sample in range(n)]
            if keys[0] not in groups:
                groups[keys[0]] = asyncio.ensure_future(self.ask_group(endpoint, request, keys))
            return await groups[keys[0]]

        async def send_chain(teacher, chain):
            for i in chain:
                answers[i][teacher] = await samples(self.endpoints[teacher], messages[i])
        chains = [asyncio.ensure_future(send_chain(teacher, chain))
                  for chain in chains for teacher in range(len(self.endpoints))]
        try:
            await asyncio.gather(*chains)
        except BaseException:  # a fatal answer (bad key, unknown model): stop the others too
            for task in [*chains, *groups.values()]:
                task.cancel()
            await asyncio.gather(*chains, *groups.values(), return_exceptions=True)
            raise
        return [[a for per_teacher in row for a in per_teacher] for row in answers]   # teachers in their order

    def request_body(self, endpoint, message, max_tokens) -> dict:
        """What goes over the wire for one continuation (message: teachers.teacher_message's text), as the chat
        or completion endpoint takes it."""
        body = {"model": endpoint.model, "temperature": self.temperature}
        if self.mode == "chat":
            return {**body, **teachers.token_budget(max_tokens, self.reasoning_effort),
                    "messages": [{"role": "user", "content": message}]}
        return {**body, "max_tokens": max_tokens, "prompt": message}

    async def ask_group(self, endpoint, request, keys) -> list:
        """The samples of one request, keys[i] caching sample i (each sample keyed apart): those in the cache from
        it; the rest in one request for n of them while the endpoint honours `n`, and one request each for what
        that did not bring back (a refused `n`, fewer choices, an unusable one). None where a sample failed."""
        answers = [None] * len(keys)
        for i, key in enumerate(keys):
            if self.cache is not None and (hit := self.cache.get(key)):
                self.cached += 1
                answers[i] = hit[0]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if len(missing) > 1 and endpoint not in self.singles_only:
            texts = await self.ask(endpoint, {**request, "n": len(missing)})
            if texts is None:              # every attempt failed: skipped, not asked again one by one
                self.failures += len(missing)
                return answers
            if texts == "refused n" or len(texts) < len(missing):
                self.stop_asking_for_n(endpoint, "it refused n (HTTP 400)" if texts == "refused n" else
                                       f"it returned {len(texts)} of {len(missing)} choices")
            for i, text in zip(missing, texts if isinstance(texts, list) else []):
                answers[i] = self.keep(keys[i], text)
            missing = [i for i, answer in enumerate(answers) if answer is None]
        for i, texts in zip(missing, await asyncio.gather(*(self.ask(endpoint, request) for _ in missing))):
            answers[i] = self.keep(keys[i], texts[0]) if isinstance(texts, list) else None
            self.failures += answers[i] is None
        return answers

    def keep(self, key, text):
        """An answer on disk the moment it arrives: one that was paid for survives a crash a line later."""
        if text is not None and self.cache is not None:
            self.cache.put(key, text, 0, 0)
        return text

    def stop_asking_for_n(self, endpoint, why: str) -> None:
        if endpoint not in self.singles_only:
            self.singles_only.add(endpoint)
            print(f"teacher {endpoint.name()}: the server does not honour n ({why}); one request per "
                  "continuation from now on", file=sys.stderr)

    async def ask(self, endpoint, request):
        """One request over HTTP with retries: its choices' texts (None for a choice cut empty at the token
        limit), None when every attempt failed, or "refused n" for a 400 to a request with n."""
        import openai
        prompt_chars = len(json.dumps(request.get("messages", request.get("prompt"))))
        for attempt in range(self.retries + 1):
            budget = request.get("max_tokens", request.get("max_completion_tokens", 0)) * request.get("n", 1)
            await self.limiter.acquire(prompt_chars // 4 + budget)
            wait = None
            async with self.slots:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.calls += 1
                try:
                    # the timeout is a deadline for the whole request, however slowly its bytes arrive
                    texts = await asyncio.wait_for(self.send(endpoint, request), self.timeout)
                except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                    raise OmniOPDError(f"teacher {endpoint.name()} rejected the API key from "
                                               f"{endpoint.api_key_env} (HTTP {error.status_code})") from None
                except openai.NotFoundError:
                    raise OmniOPDError(f"teacher {endpoint.name()}: the server does not know model "
                                               f"'{endpoint.model}' (HTTP 404)") from None
                except openai.BadRequestError as error:  # this request will never work: skip it, do not retry
                    if "n" in request:
                        return "refused n"
                    self.log(endpoint, f"bad request (HTTP 400): {error.message}")
                    break
                except openai.RateLimitError as error:
                    wait, texts = retry_after_seconds(error), None
                except (openai.APIError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError,
                        AttributeError) as error:
                    # 5xx, timeouts, refused connections, malformed JSON or a reply without the expected fields
                    wait, texts = retry_after_seconds(error), None
                    if attempt == self.retries:
                        self.log(endpoint, f"{type(error).__name__}: {error}")
                finally:
                    self.in_flight -= 1
            if texts is not None:
                return texts
            if attempt < self.retries:
                self.retried += 1
                # full jitter on an exponential schedule, never shorter than the server asked
                backoff = random.uniform(0.5, 1.5) * min(self.max_backoff, self.backoff * 2 ** attempt)
                await asyncio.sleep(max(backoff, min(wait or 0.0, self.max_backoff * 4)))
        return None

    async def send(self, endpoint, request) -> list:
        """One HTTP request: its choices' texts by teachers.teacher_answer's rule (at most the n asked for), the
        server's usage figures on the meter. A single request's unusable text is an error (retried)."""
        client = self.clients[endpoint]
        if "messages" in request:
            reply = await client.chat.completions.create(**request)
            texts = [choice.message.content for choice in reply.choices]
        else:
            reply = await client.completions.create(**request)
            texts = [choice.text for choice in reply.choices]
        if not texts or not all(isinstance(text, str) for text in texts):
            raise TypeError(f"reply has no text ({type(reply).__name__})")
        self.count(reply.usage)
        # an empty reply cut at max_tokens is no answer; one that stopped is the answer ""
        answers = [teachers.teacher_answer(text, choice.finish_reason in teachers.STOPPED_ON_PURPOSE)
                   for text, choice in zip(texts, reply.choices)][:request.get("n", 1)]
        if "n" not in request and answers[0] is None:
            raise ValueError("an empty reply cut at the token limit")
        return answers

    def count(self, usage) -> None:
        """The server's own usage figures (a missing, negative or non-integer one counts as 0)."""
        def tokens(owner, name):
            value = getattr(owner, name, 0)
            return value if isinstance(value, int) and value > 0 else 0
        self.prompt_tokens += tokens(usage, "prompt_tokens")
        self.cached_tokens += tokens(getattr(usage, "prompt_tokens_details", None), "cached_tokens")
        self.tokens += tokens(usage, "completion_tokens")

    def log(self, endpoint, message):
        """One line on stderr: any API key a server echoed back (or part of it) is blanked first, then it is cut."""
        keys = [os.environ.get(e.api_key_env, "") for e in self.endpoints]
        print(f"teacher {endpoint.name()}: request skipped: {common.redact(message, keys)[:200]}", file=sys.stderr)

    def close(self):
        for client in self.clients.values():
            self.loop.run_until_complete(client.close())
        self.loop.close()
        if self.cache is not None:
            self.cache.db.close()
