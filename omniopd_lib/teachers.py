"""Teachers, text in and text out: a local transformers model (HFTeacher) and any OpenAI-compatible endpoint
(OpenAITeacher). Both follow one interface, `continuations(prefixes, n, max_tokens, draw, rows)`, one rule for a
reply (teacher_answer) and one prompt (teacher_message)."""

import concurrent.futures
import os
import string
import sys
from pathlib import Path

import httpx
import torch

from omniopd_lib.common import DeadlineTransport, OmniOPDError, redact
from omniopd_lib.generation import PLAIN_TEMPLATE, decode_after, generate, stop_token_ids
from omniopd_lib.models import load_model


CHAT_CONTINUE_PROMPT = (
    "Below is a problem and the beginning of a solution to it. Continue the solution exactly where "
    "it stops, as if you were writing the next words yourself. Do not repeat any of the text, do not "
    "restart, and do not comment: reply with the continuation only.\n\n{prefix}")


TEACHER_PROMPT_FIELDS = ("prefix", "question", "answer")


def read_teacher_prompt(path: str) -> str:
    """--teacher-prompt FILE: its text, checked: {prefix} must be there and no other name than
    TEACHER_PROMPT_FIELDS may appear in braces."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise OmniOPDError(f"--teacher-prompt {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:   # a lone { or }
        raise OmniOPDError(f"--teacher-prompt {path}: {error}; write {{{{ and }}}} for literal braces") from None
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
    block (reasoning models). An empty reply the teacher ended on purpose (a stop token; finish_reason "stop")
    is "", a vote for ending the solution here, which the student's own draft [EOS] can match. An empty reply
    cut by the token limit, a think block never closed, or a reply without text is a failed request: None."""
    if not isinstance(text, str):
        return None
    if text.lstrip().startswith("<think>"):
        if "</think>" not in text:
            return None   # it spent every token thinking
        text = text.split("</think>", 1)[1].lstrip()
    if text.strip():
        return text
    return "" if stopped else None


class Teacher:
    """What every teacher is, declared once. Text in, text out:
        continuations(prefixes, n, max_tokens, draw="", rows=None) -> per prefix, its answers, or None
    and what a run reads of it: `mode` ("chat": asked to continue the partial solution; "completion": sent the raw
    prefix), `prompt` (a --teacher-prompt's text; "" = the built-in one), `shares_tokenizer` (a local teacher with
    the student's tokenizer: it writes L tokens, and OPD can read its logits), and the counters a run logs and a
    checkpoint keeps (TEACHER_COUNTERS: calls, failures, tokens)."""
    mode: str = "completion"
    prompt: str = ""
    shares_tokenizer: bool = False
    calls: int = 0
    failures: int = 0
    tokens: int = 0

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        raise NotImplementedError

    def meter(self) -> dict:
        """What the run logs as teacher/*: the counters (a pool meters more: cached answers, prompt tokens, cost)."""
        return {"calls": self.calls, "failures": self.failures, "tokens": self.tokens}


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
            self.tokens += int((new_ids != self.tokenizer.pad_token_id).sum())
            stopped = torch.isin(new_ids, stops).any(1).tolist()
            answers += [teacher_answer(text, ended) for text, ended in
                        zip(self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), stopped)]
        self.calls += len(prefixes) * n
        self.failures += sum(a is None for a in answers)
        rows = [answers[i * n:(i + 1) * n] for i in range(len(prefixes))]
        return [[a for a in row if a is not None] or None for row in rows]


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible endpoint (OpenAI; Anthropic and Gemini compatibility endpoints; vLLM; SGLang).
    One request per continuation, `concurrency` in flight; the openai client retries timeouts, 429
    (honouring Retry-After) and 5xx with backoff. A prefix whose requests all fail comes back as None."""

    def __init__(self, model, base_url="", api_key_env="OPENAI_API_KEY", mode="auto", temperature=1.0,
                 timeout=60.0, retries=4, concurrency=8, reasoning_effort=""):
        import openai
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise OmniOPDError(f"teacher API key missing: set the environment variable {api_key_env}")
        # timeout: a whole-request deadline (DeadlineTransport), not httpx's per-read one
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=retries,
                                    http_client=httpx.Client(transport=DeadlineTransport(timeout), timeout=timeout))
        self.model, self.temperature, self.concurrency = model, temperature, concurrency
        self.reasoning_effort = reasoning_effort
        self.mode = "chat" if mode == "auto" else mode
        self.calls = self.failures = self.tokens = 0

    def one_continuation(self, message: str, max_tokens: int):
        """One request (message: teacher_message's text); returns its text under teacher_answer's rule, or None
        (and logs one line) when it fails."""
        import openai
        try:
            if self.mode == "chat":
                reply = self.client.chat.completions.create(
                    model=self.model, temperature=self.temperature, **token_budget(max_tokens, self.reasoning_effort),
                    messages=[{"role": "user", "content": message}])
                text = reply.choices[0].message.content
            else:
                reply = self.client.completions.create(
                    model=self.model, prompt=message, max_tokens=max_tokens, temperature=self.temperature)
                text = reply.choices[0].text
            stopped = reply.choices[0].finish_reason in STOPPED_ON_PURPOSE
            self.tokens += getattr(reply.usage, "completion_tokens", 0) or 0
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
            what = "does not know the model" if error.status_code == 404 else "rejected the API key"
            raise OmniOPDError(f"teacher {self.model}: the server {what} (HTTP {error.status_code})") from None
        except (openai.OpenAIError, AttributeError, IndexError, TypeError, ValueError) as error:
            reason = redact(error, [self.client.api_key])[:120]   # a server may echo the key back: blank, then cut
            print(f"teacher request failed: {type(error).__name__}: {reason}", file=sys.stderr)
            return None
        return teacher_answer(text, stopped)

    def continuations(self, prefixes: list[str], n: int, max_tokens: int, draw="", rows=None) -> list[list[str] | None]:
        """n continuations of each prefix (rows: each prefix's dataset row, for the prompt's {question} and
        {answer}); all requests of the call go out together. No cache, so `draw` is unused."""
        messages = [teacher_message(teacher_template(self), p, row) for p, row in zip(prefixes, rows or [None] * len(prefixes))]
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            futures = [[pool.submit(self.one_continuation, m, max_tokens) for _ in range(n)] for m in messages]
            answers = [[f.result() for f in row] for row in futures]
        self.calls += len(prefixes) * n
        self.failures += sum(a is None for row in answers for a in row)
        return [[a for a in row if a is not None] or None for row in answers]


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
                             cfg.teacher_retries, cfg.teacher_concurrency, cfg.teacher_reasoning_effort)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return HFTeacher(cfg.teacher, device, cfg.teacher_mode, cfg.teacher_temperature, dtype)


CHARACTERS_PER_TOKEN_AT_MOST = 64   # a reply is cut to this many characters per wanted token before tokenizing


def first_tokens(text: str, tokenizer, count: int) -> str:
    """The beginning of text that the tokenizer writes in `count` tokens. An oversized reply is cut to
    count · CHARACTERS_PER_TOKEN_AT_MOST characters first: tokenizing 20 MB to keep 16 tokens takes minutes."""
    text = text[:count * CHARACTERS_PER_TOKEN_AT_MOST]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= count else tokenizer.decode(ids[:count])


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


def teacher_prefix_texts(tokenizer, rollout, forks, questions, cfg) -> list[str]:
    """decode(s_t) for each fork (b, t): the prompt as teacher_view_template shows it, then y_<t as text."""
    texts = []
    for b, t in forks:
        prompt_ids = rollout.prompt_ids_B_P[b][rollout.prompt_mask_B_P[b].bool()].tolist()
        written = rollout.response_ids_B_T[b, :t].tolist()
        if cfg.prompt_template == "chat":
            texts.append(PLAIN_TEMPLATE.format(question=questions[b]) + decode_after(tokenizer, prompt_ids, written))
        else:
            texts.append(tokenizer.decode(prompt_ids + written, skip_special_tokens=True))
    return texts
