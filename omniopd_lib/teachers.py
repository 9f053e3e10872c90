"""Teachers, text in and text out: a local transformers model (HFTeacher) and any OpenAI-compatible endpoint
(OpenAITeacher). Both follow one interface, `continuations(prefixes, n, max_tokens, draw, rows)`, one rule for a
reply (teacher_answer) and one prompt (teacher_message)."""

import concurrent.futures
import contextlib
import json
import os
import string
import sys
import threading
import time
import weakref
from pathlib import Path

import httpx
import torch

from omniopd_lib.common import REQUEST, DeadlineTransport, OmniOPDError, redact
from omniopd_lib.generation import PLAIN_TEMPLATE, generate, stop_token_ids, tokens_generated
from omniopd_lib.models import load_model


# what a chat teacher replies when the solution needs nothing more: a chat reply cannot be empty, so it says so
END_MARK = "[END]"
CHAT_CONTINUE_PROMPT = (
    "Below is a problem and the beginning of a solution to it. Continue the solution exactly where "
    "it stops, as if you were writing the next words yourself. Do not repeat any of the text, do not "
    "restart, and do not comment: reply with the continuation only. If the solution is already complete, "
    "reply with " + END_MARK + " alone.\n\n{prefix}")


TEACHER_PROMPT_FIELDS = ("prefix", "question", "answer")


def read_teacher_prompt(path: str) -> str:
    """--teacher-prompt FILE: its text, checked: {prefix} must be there and no other name than
    TEACHER_PROMPT_FIELDS may appear in braces."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise OmniOPDError(f"--teacher-prompt {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text)
                  if name is not None]
    except ValueError as error:   # a lone { or }
        raise OmniOPDError(f"--teacher-prompt {path}: {error}; write {{{{ and }}}} for literal braces") from None
    names = {name for name, _, _ in fields}
    if any(spec or conversion for _, spec, conversion in fields):
        raise OmniOPDError(f"--teacher-prompt {path}: write each placeholder plain, with no format spec or "
                           "conversion (:… or !…)")
    unknown = sorted(names - set(TEACHER_PROMPT_FIELDS))
    if unknown:
        raise OmniOPDError(f"--teacher-prompt {path}: unknown placeholder {{{unknown[0]}}}; the known ones are "
                           + ", ".join(f"{{{name}}}" for name in TEACHER_PROMPT_FIELDS))
    if "prefix" not in names:
        raise OmniOPDError(f"--teacher-prompt {path}: no {{prefix}}: the teacher must see the text it continues")
    return text


def teacher_message(template: str, prefix: str, row: dict | None = None) -> str:
    """What the teacher is sent for one continuation: template with {prefix} (the decoded s_t), {question}
    and {answer} (the row's reference solution; empty when the row has none) filled in."""
    row = row or {}
    return template.format(prefix=prefix, question=row.get("question") or "", answer=row.get("answer") or "")


def teacher_template(teacher) -> str:
    """The teacher's --teacher-prompt, or by default: the instruction in chat mode, the raw prefix in completion."""
    return teacher.prompt or (CHAT_CONTINUE_PROMPT if teacher.mode == "chat" else "{prefix}")


# finish_reason of a reply the teacher ended itself; a missing or unknown one counts as cut
STOPPED_ON_PURPOSE = ("stop", "eos", "end_turn", "stop_sequence")


def teacher_answer(text, stopped: bool):
    """The one rule every teacher backend follows for a reply: its text, less a leading <think>...</think>
    block (reasoning models). An empty reply the teacher ended on purpose (a stop token; finish_reason "stop"; a
    chat teacher's "[END]", END_MARK, which the instruction asks for when the solution is complete) is "", a vote
    for ending the solution here, which the student's own draft [EOS] can match; an END_MARK after text is cut. An empty reply
    cut by the token limit, a think block never closed, or a reply without text is a failed request: None."""
    if not isinstance(text, str):
        return None
    if text.lstrip().startswith("<think>"):
        if "</think>" not in text:
            return None   # it spent every token thinking
        text = text.split("</think>", 1)[1].lstrip()
    if text.rstrip().endswith(END_MARK):   # "[END]" alone: the solution is complete; after text: it ends there
        text, stopped = text.rstrip()[:-len(END_MARK)].rstrip(" "), True
    if text.strip():
        return text
    return "" if stopped else None


class Teacher:
    """What every teacher is, declared once. Text in, text out:
        continuations(prefixes, n, max_tokens, draw="", rows=None) -> per prefix, its answers, or None
    and what a run reads of it: `mode` ("chat": asked to continue the partial solution; "completion": sent the raw
    prefix), `overlaps` (an API teacher: InFlight sends its requests on a thread), `prompt` (a --teacher-prompt's
    text; "" = the built-in one), `shares_tokenizer` (a local teacher with the student's tokenizer: it writes L
    tokens, and OPD can read its logits), and the counters a run logs and a checkpoint keeps (TEACHER_COUNTERS:
    continuations asked for and failed, completion tokens, and for an API teacher its bill: HTTP requests, prompt
    tokens, the prompt tokens the server says it served from its cache)."""
    mode: str = "completion"
    prompt: str = ""
    shares_tokenizer: bool = False
    overlaps: bool = False   # its requests may run on a thread while the student drafts (InFlight)
    answers_per_sample: int = 1   # answers each of the n samples asked for brings back (a pool of T teachers: T)
    calls: int = 0
    failures: int = 0
    tokens: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    price: tuple = ()   # --teacher-price: dollars per million prompt, completion (and cached prompt) tokens

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        raise NotImplementedError

    def meter(self) -> dict:
        """What the run logs as teacher/*: the counters (an API teacher adds its bill, a pool its cache)."""
        return {"calls": self.calls, "failures": self.failures, "tokens": self.tokens}


def dollars(price: tuple, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
    """The bill at `price` = (prompt, completion[, cached prompt]) dollars per million tokens: cached prompt tokens
    at their own price where one is given (providers discount them), else as any prompt token."""
    prompt_price, completion_price = price[0], price[1]
    cached_price = price[2] if len(price) > 2 else prompt_price
    return ((prompt_tokens - cached_tokens) * prompt_price + cached_tokens * cached_price
            + completion_tokens * completion_price) / 1e6


def parse_price(text: str) -> tuple:
    """--teacher-price 'IN,OUT[,CACHED]' -> floats, dollars per million tokens; "" -> () (no cost meter)."""
    if not text:
        return ()
    try:
        price = tuple(float(x) for x in text.split(","))
    except ValueError:
        price = ()
    if len(price) not in (2, 3) or not all(0 <= p < float("inf") for p in price):   # nan fails both
        raise OmniOPDError(f"--teacher-price {text!r}: give dollars per million prompt and completion tokens, "
                           "and optionally cached prompt tokens, e.g. 2.5,10 or 2.5,10,1.25")
    return price


TEACHER_THREAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="teacher")


class InFlight:
    """Step 4 under way. An API teacher's requests (teacher.overlaps) go out on the teacher's thread the moment this
    is built, so the student drafts and scores its chunks while they are in flight; a local teacher shares the
    device and torch's random state, so it runs only when waited for, where a run without overlap would run it.
    wait(clock) returns finish(the answers), computed on the caller's thread (the student's tokenizer is not
    shared across threads), and charges time/teacher (the teacher's own time) and time/teacher_wait (what the
    student waited for it after the overlap; all of it for a local teacher)."""

    def __init__(self, teacher, request: tuple, finish=lambda answers: answers):
        self.teacher, self.request, self.finish, self.seconds = teacher, request, finish, 0.0
        self.future = TEACHER_THREAD.submit(self.answers) if teacher.overlaps else None

    def answers(self):
        started = time.perf_counter()
        try:
            return self.teacher.continuations(*self.request)
        finally:
            self.seconds = time.perf_counter() - started

    def wait(self, clock=None):
        with clock("teacher_wait") if clock else contextlib.nullcontext():
            try:
                answers = self.finish(self.future.result() if self.future else self.answers())
            except BaseException:   # Ctrl-C: requests in flight are cut and no new one (billed) goes out
                getattr(self.teacher, "cancel", lambda: None)()
                raise
        if clock:
            clock.add("teacher", self.seconds)
        return answers


class HFTeacher(Teacher):
    """A local transformers model as a teacher. OmniOPD uses only its text (continuations);
    token-level OPD may also read its logits through `.model`."""

    def __init__(self, name, device, mode="auto", temperature=1.0, dtype=torch.float32, max_batch=64):
        self.model, self.tokenizer = load_model(name, "teacher", device, dtype)
        self.max_batch = max_batch
        self.model.eval().requires_grad_(False)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.mode = ("chat" if has_template else "completion") if mode == "auto" else mode
        if mode == "auto" and has_template:   # base models ship templates too (Qwen2.5-7B does)
            print(f"note: teacher {name} continues in chat mode because its tokenizer has a chat template; "
                  f"for a base model, --teacher-mode completion sends the raw prefix", file=sys.stderr)
        self.temperature = temperature
        self.calls = self.failures = self.tokens = 0

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        """n sampled continuations of each prefix, up to max_tokens teacher tokens each, generated in batches of
        at most max_batch sequences. rows: each prefix's dataset row, for {question} and {answer} in the
        teacher's prompt. `draw` names the call (seed and step) for teachers that cache; none here."""
        prefixes = [teacher_message(teacher_template(self), p, row) for p, row in zip(prefixes, rows or [None] * len(prefixes))]
        if self.mode == "chat":  # the template writes the special tokens (BOS too) into the text itself
            prefixes = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                           add_generation_prompt=True) for p in prefixes]
        stops = torch.tensor(stop_token_ids(self.model, self.tokenizer), device=self.model.device)
        answers, step = [], max(1, self.max_batch // n)
        for start in range(0, len(prefixes), step):
            batch = self.tokenizer(prefixes[start:start + step], return_tensors="pt", padding=True,
                                   add_special_tokens=self.mode != "chat").to(self.model.device)
            new_ids = generate(self.model, self.tokenizer, batch.input_ids, batch.attention_mask,
                               max_tokens, self.temperature, n=n)
            self.tokens += int(tokens_generated(new_ids, stops).sum())
            stopped = torch.isin(new_ids, stops).any(1).tolist()
            answers += [teacher_answer(text, ended) for text, ended in
                        zip(self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), stopped)]
        self.calls += len(prefixes) * n
        self.failures += sum(a is None for a in answers)
        rows = [answers[i * n:(i + 1) * n] for i in range(len(prefixes))]
        return [[a for a in row if a is not None] or None for row in rows]


LIVE_API_TEACHERS = weakref.WeakSet()   # every OpenAITeacher of this process, for cancel_every_teacher


def cancel_every_teacher() -> None:
    """Ctrl-C, wherever it lands: every API teacher of the process stops sending and cuts what is in flight, so
    that the teacher's thread (which the interpreter waits for at exit) ends at once."""
    for teacher in list(LIVE_API_TEACHERS):
        teacher.cancel()


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible endpoint (OpenAI; Anthropic and Gemini compatibility endpoints; vLLM; SGLang; llama.cpp).
    The n continuations of a prefix are one request (`n`), so the prefix is sent and billed once; a server that
    refuses `n` (a 400 to the request with n that the same request without n does not get) or returns fewer choices
    gets single requests from then on (said once). A rollout's prefixes are nested, so they go out one after another
    in ascending order, each after the last, where a server's prefix cache can reuse the shared part; a chain whose
    request failed sends no more (the endpoint is down: its later prefixes would fail the same way). Different
    rollouts go out concurrently, `concurrency` at a time. The openai client retries timeouts, 429 (honouring
    Retry-After) and 5xx with backoff; every HTTP request, retries included, is on the meter. A prefix whose
    requests all fail comes back as None. cancel() (Ctrl-C) stops every request in flight and sends no more."""
    overlaps = True

    def __init__(self, model, base_url="", api_key_env="OPENAI_API_KEY", mode="auto", temperature=1.0,
                 timeout=60.0, retries=4, concurrency=8, reasoning_effort="", price=()):
        import openai
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise OmniOPDError(f"teacher API key missing: set the environment variable {api_key_env}")
        # timeout: a whole-request deadline (DeadlineTransport), not httpx's per-read one; every request sent, the
        # client's own retries too, passes the meter's hook
        self.http = httpx.Client(transport=DeadlineTransport(timeout), timeout=timeout,
                                 event_hooks={"request": [self.count_request]})
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=retries,
                                    http_client=self.http)
        self.model, self.temperature, self.concurrency = model, temperature, concurrency
        self.reasoning_effort, self.price = reasoning_effort, price
        self.mode = "chat" if mode == "auto" else mode
        self.calls = self.failures = self.tokens = self.requests = self.prompt_tokens = self.cached_tokens = 0
        self.n_per_request, self.lock, self.cancelled = True, threading.Lock(), threading.Event()
        self.ledger = None   # the run folder's spending ledger, once the run attaches one (attach_ledger)
        LIVE_API_TEACHERS.add(self)

    def attach_ledger(self, path) -> None:
        """Write every request and every reply's usage to an append-only ledger as it happens, so that what a
        killed step spent is on the bill after a resume (the checkpoint's counters predate that step)."""
        self.ledger = open(path, "a", buffering=1)

    def spent(self, **amounts) -> None:
        if self.ledger is not None:
            self.ledger.write(json.dumps(amounts) + "\n")

    def count_request(self, request) -> None:
        """The meter's `requests`: every HTTP request that leaves, the client's retries included; none leaves once
        the run is cancelled."""
        REQUEST.cancelled = self.cancelled
        if self.cancelled.is_set():
            raise Cancelled("the run was interrupted: no more teacher requests")
        with self.lock:
            self.requests += 1
            self.spent(requests=1)

    def cancel(self) -> None:
        """Stop at once: no request is sent from now on, and those in flight are cut (their connections closed)."""
        self.cancelled.set()
        with contextlib.suppress(Exception):
            self.http.close()

    def one_request(self, message: str, max_tokens: int, n: int = 1):
        """One request for n continuations of message (teacher_message's text): each answer under teacher_answer's
        rule, one per choice index 0..n-1 (a choice repeating an index gets no second vote), each cut to
        max_tokens · CHARACTERS_PER_TOKEN_AT_MOST characters; [None] * n (and one logged line) when it failed;
        REFUSED for a 400 (the caller tells a refused `n` from a bad request)."""
        import openai
        sampling = {"n": n} if n > 1 else {}
        try:
            if self.mode == "chat":
                reply = self.client.chat.completions.create(
                    model=self.model, temperature=self.temperature, **token_budget(max_tokens, self.reasoning_effort),
                    messages=[{"role": "user", "content": message}], **sampling)
            else:
                reply = self.client.completions.create(
                    model=self.model, prompt=message, max_tokens=max_tokens, temperature=self.temperature, **sampling)
            self.count(reply.usage)
            answers = reply_answers(reply, self.mode, n, max_tokens * CHARACTERS_PER_TOKEN_AT_MOST)
            if not answers:
                raise ValueError("the reply has no choices")
            return answers
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
            what = "does not know the model" if error.status_code == 404 else "rejected the API key"
            raise OmniOPDError(f"teacher {self.model}: the server {what} (HTTP {error.status_code})") from None
        except openai.BadRequestError as error:
            return Refused(error)
        except (openai.OpenAIError, httpx.HTTPError, AttributeError, IndexError, TypeError, ValueError) as error:
            if not self.cancelled.is_set():
                self.log_failure(error)
            return [None] * n

    def meter(self) -> dict:
        """The counters and the bill: requests, prompt tokens and those served from the server's cache, and with
        --teacher-price the dollars spent so far."""
        bill = {"requests": self.requests, "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens}
        if self.price:
            bill["dollars"] = dollars(self.price, self.prompt_tokens, self.cached_tokens, self.tokens)
        return {**super().meter(), **bill}

    def count(self, usage) -> None:
        """One answered request's usage figures on the meter (cached prompt tokens where the server reports them,
        as OpenAI's prompt_tokens_details.cached_tokens; never more than the prompt tokens)."""
        def tokens(owner, name):   # a missing, negative or non-integer figure counts as 0
            value = getattr(owner, name, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
        details = getattr(usage, "prompt_tokens_details", None)
        with self.lock:
            prompt = tokens(usage, "prompt_tokens")
            self.prompt_tokens += prompt
            self.cached_tokens += min(tokens(details, "cached_tokens"), prompt)
            self.tokens += tokens(usage, "completion_tokens")
            self.spent(prompt_tokens=prompt, cached_tokens=min(tokens(details, "cached_tokens"), prompt),
                       tokens=tokens(usage, "completion_tokens"))

    def log_failure(self, error) -> None:
        reason = redact(error, [self.client.api_key])[:120]   # a server may echo the key back: blank, then cut
        print(f"teacher request failed: {type(error).__name__}: {reason}", file=sys.stderr)

    def stop_asking_for_n(self, why: str) -> None:
        with self.lock:
            if self.n_per_request:
                print(f"teacher {self.model}: the server does not honour n ({why}); one request per continuation "
                      "from now on", file=sys.stderr)
            self.n_per_request = False

    def samples(self, message: str, max_tokens: int, n: int, singles) -> list:
        """n continuations of one message: one request for all n while the server honours `n`; what it did not
        return, one request each, concurrently on the `singles` pool. A 400 to the request with n is taken for a
        refused `n` only when the same message alone is answered; a 400 to both is this message's fault (too
        long, say), and n stays on for the others."""
        answers = []
        if n > 1 and self.n_per_request:
            answers = self.one_request(message, max_tokens, n)
            if isinstance(answers, Refused):
                alone = self.one_request(message, max_tokens)
                if isinstance(alone, Refused):
                    self.log_failure(alone.error)
                    return [None] * n
                self.stop_asking_for_n("it refused a request for n (HTTP 400) and answered one without")
                answers = alone
            elif answers == [None] * n:   # the request failed: its singles would fail alike
                return answers
            elif len(answers) < n:
                self.stop_asking_for_n(f"it returned {len(answers)} of {n} choices")
        rest = [singles.submit(self.one_request, message, max_tokens) for _ in range(n - len(answers))]
        for future in rest:
            got = future.result()
            if isinstance(got, Refused):
                self.log_failure(got.error)
                got = [None]
            answers.append(got[0])
        return answers

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        """n continuations of each prefix (rows: each prefix's dataset row, for the prompt's {question} and
        {answer}). Consecutive nested prefixes (one rollout's forks in ascending order, as omniopd.py passes them)
        form a chain sent in order, until one of its requests fails; chains run concurrently. No cache, so `draw`
        is unused."""
        rows = rows or [None] * len(prefixes)
        messages = [teacher_message(teacher_template(self), p, row) for p, row in zip(prefixes, rows)]
        answers = [[None] * n for _ in prefixes]

        def send(chain):
            for i in chain:
                if self.cancelled.is_set():
                    return
                answers[i] = self.samples(messages[i], max_tokens, n, singles)
                if all(a is None for a in answers[i]):
                    return
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as chains, \
                concurrent.futures.ThreadPoolExecutor(self.concurrency) as singles:
            list(chains.map(send, nested_chains(prefixes, rows)))
        self.calls += len(prefixes) * n
        self.failures += sum(a is None for row in answers for a in row)
        return [[a for a in row if a is not None] or None for row in answers]


class Cancelled(BaseException):
    """A request the run no longer wants (Ctrl-C): not an Exception, so that no retry loop catches it."""


class Refused:
    """A request the server answered with HTTP 400."""

    def __init__(self, error):
        self.error = error


def reply_answers(reply, mode: str, n: int, max_chars: int) -> list:
    """A chat or completion reply's answers by teacher_answer's rule, at most one per choice index 0..n-1 (a choice
    that repeats an index, or names one outside, gets no vote; a choice with no index takes the next free one), each
    text cut to max_chars characters before it is kept."""
    kept = {}
    for choice in getattr(reply, "choices", None) or []:
        index = getattr(choice, "index", None)
        if not isinstance(index, int) or isinstance(index, bool):
            index = next((i for i in range(n) if i not in kept), None)
        if index is None or not 0 <= index < n or index in kept:
            continue
        text = choice.message.content if mode == "chat" else choice.text
        text = text[:max_chars] if isinstance(text, str) else text
        kept[index] = teacher_answer(text, choice.finish_reason in STOPPED_ON_PURPOSE)
    return [kept[i] for i in sorted(kept)]


def nested_chains(prefixes: list[str], rows: list) -> list[list[int]]:
    """Runs of consecutive prefixes of the same row where each extends the one before (a rollout's forks in
    ascending order), as lists of indices; every other prefix is a chain of its own."""
    chains = []
    for i, prefix in enumerate(prefixes):
        last = chains[-1][-1] if chains else None
        if last is not None and rows[last] is rows[i] and prefix.startswith(prefixes[last]):
            chains[-1].append(i)
        else:
            chains.append([i])
    return chains


def token_budget(max_tokens: int, reasoning_effort: str) -> dict:
    """The chat request's length fields. Reasoning models refuse max_tokens (OpenAI answers 400) and take
    max_completion_tokens, which their thinking also spends."""
    if reasoning_effort:
        return {"max_completion_tokens": max_tokens, "reasoning_effort": reasoning_effort}
    return {"max_tokens": max_tokens}


def make_teacher(cfg, device):
    """--teacher openai:MODEL -> OpenAITeacher; anything else -> HFTeacher."""
    if cfg.teacher.startswith("openai:"):
        return OpenAITeacher(cfg.teacher.removeprefix("openai:"), cfg.teacher_base_url, cfg.teacher_api_key_env,
                             cfg.teacher_mode, cfg.teacher_temperature, cfg.teacher_timeout,
                             cfg.teacher_retries, cfg.teacher_concurrency, cfg.teacher_reasoning_effort,
                             parse_price(cfg.teacher_price))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return HFTeacher(cfg.teacher, device, cfg.teacher_mode, cfg.teacher_temperature, dtype)


CHARACTERS_PER_TOKEN_AT_MOST = 64   # a reply is cut to this many characters per wanted token before tokenizing


def first_tokens(text: str, tokenizer, count: int) -> str:
    """The beginning of text that the tokenizer writes in `count` tokens. An oversized reply is cut to
    count · CHARACTERS_PER_TOKEN_AT_MOST characters first: tokenizing 20 MB to keep 16 tokens takes minutes."""
    text = text[:count * CHARACTERS_PER_TOKEN_AT_MOST]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= count else tokenizer.decode(ids[:count])


LEDGER = "teacher_ledger.jsonl"
LEDGER_COUNTERS = ("requests", "prompt_tokens", "cached_tokens", "tokens")


def ledger_totals(path) -> dict:
    """What a ledger says was spent: each counter summed over its lines. The file is untrusted (it sits in a run
    folder): a line that is not a JSON object of whole numbers of 0 or more, as a killed write's last line, is
    skipped; a missing file is nothing spent."""
    totals = dict.fromkeys(LEDGER_COUNTERS, 0)
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return totals
    for line in lines:
        try:
            amounts = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(amounts, dict) and all(k in totals and type(v) is int and v >= 0 for k, v in amounts.items()):
            for name, value in amounts.items():
                totals[name] += value
    return totals


def keep_ledger(teacher, out, resumed_from=None) -> dict | None:
    """An API teacher's ledger in the run folder <out>. A fresh run starts it empty; a resumed run reads what the
    checkpoint's run folder spent (the step that was killed included), carries it on (a new folder's ledger begins
    with those totals) and puts the teacher's counters there. Returns the counters as the checkpoint had them
    (the first resumed step's bill is measured from there), or None for a teacher that keeps no ledger."""
    if not hasattr(teacher, "attach_ledger"):
        return None
    path, before = Path(out) / LEDGER, {name: getattr(teacher, name) for name in LEDGER_COUNTERS}
    path.parent.mkdir(parents=True, exist_ok=True)
    if resumed_from is None:
        path.write_text("")
    else:
        spent = ledger_totals(Path(resumed_from).parent.parent / LEDGER)
        spent = {name: max(spent[name], before[name]) for name in LEDGER_COUNTERS}
        if Path(resumed_from).parent.parent.resolve() != Path(out).resolve():
            path.write_text(json.dumps(spent) + "\n")
        for name, value in spent.items():
            setattr(teacher, name, value)
    teacher.attach_ledger(path)
    return before


def ready_teacher(teacher, cfg, tokenizer):
    """The teacher with its --teacher-prompt, and for a local one whether it shares the student's tokenizer (then
    it writes L tokens, and token-level OPD can read its logits)."""
    if teacher is not None and cfg.teacher_prompt:
        teacher.prompt = read_teacher_prompt(cfg.teacher_prompt)
    if isinstance(teacher, HFTeacher):
        teacher.shares_tokenizer = teacher.tokenizer.get_vocab() == tokenizer.get_vocab()
    return teacher


def teacher_view_template(cfg) -> str:
    """How the teacher sees a question: as the student's plain template, or, when the student's prompt is its
    own chat format (whose role words would survive decoding), as the default plain template."""
    return PLAIN_TEMPLATE if cfg.prompt_template == "chat" else cfg.prompt_template


def draw_name(cfg, step: int) -> str:
    """The name of a step's teacher calls: a caching teacher answers a draw only with what it drew for it."""
    return f"seed {cfg.seed} step {step}"


