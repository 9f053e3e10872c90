"""A small OpenAI-compatible HTTP server for a local Hugging Face model.

    python -m omniopd_tools.serve --model toy --port 8000
    python omniopd.py --teacher openai:toy --teacher-base-url http://127.0.0.1:8000/v1

It answers POST /v1/completions and POST /v1/chat/completions in the OpenAI wire
format, so the real `openai` client (and OmniOPD's OpenAITeacher) can reach the
toy teacher as a black box over real HTTP: the tests and benchmarks use it on
127.0.0.1. For real models, serve with vLLM or SGLang instead.

The toy teacher has no chat template, so for chat requests the server stands in
for an instruction-following model: it recognises teachers.CHAT_CONTINUE_PROMPT
and continues the prefix inside it; models with a chat template get the messages
through that template.

For the reliability tests and benchmarks it can also misbehave on purpose
(`--fault-rate 0.3`): a share of requests gets a 429 with Retry-After, a 500, a
reply slower than any client waits, malformed JSON, an empty text cut at the token limit
(what a reasoning model sends when thinking used every token) or a refusal.
`--latency` adds a fixed delay to every request, and `--model echo` answers
without any model (a fixed text per prompt), for measuring a client alone.
"""

import argparse
import collections
import concurrent.futures
import hashlib
import json
import queue
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from omniopd_lib import models
from omniopd_lib.generation import tokens_generated
from omniopd_lib import teachers
from omniopd_lib.generation import generate, left_pad, stop_token_ids

CHAT_HEAD = teachers.CHAT_CONTINUE_PROMPT.split("{prefix}")[0]
FAULT_KINDS = ("429", "500", "timeout", "malformed", "empty", "refusal")
# answers as reasoning models give them, on request only: a closed think block before the text, or thinking
# cut off by max_tokens
REASONING_KINDS = ("think", "think_unfinished")


@dataclass
class FaultPlan:
    """Which requests misbehave: each request draws one fault from `kinds` with probability `rate`."""
    rate: float = 0.0
    kinds: tuple = FAULT_KINDS
    retry_after: float = 1.0      # seconds, sent with every 429
    hang_seconds: float = 5.0     # how long a "timeout" request waits before answering
    seed: int = 0


class GumbelSampler:
    """A logits processor that turns greedy decoding into sampling from softmax(logits / τ) with generators of
    its own: argmax(logits / τ + g), g ~ Gumbel(0, 1) drawn per token, is such a sample (the Gumbel-max trick).
    Each request's rows draw from that request's generator, seeded by ModelServer.request_seed."""

    def __init__(self, seeds: list[int], rows_per_seed: list[int], temperature: float):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.rows_per_seed, self.temperature = rows_per_seed, temperature

    def __call__(self, input_ids, scores):
        shares = [torch.rand((rows, scores.shape[1]), generator=generator, dtype=torch.float64)
                  for generator, rows in zip(self.generators, self.rows_per_seed)]
        gumbel = -torch.log(-torch.log(torch.cat(shares).clamp(1e-300, 1.0 - 1e-16)))
        return scores.float() / self.temperature + gumbel.to(scores.device, torch.float32)


class ModelServer(ThreadingHTTPServer):
    """Serves one model. Requests that arrive together are generated together: a worker thread takes
    every waiting request with the same sampling settings and runs them as one batched generate call.
    model_name "echo" serves no model: each answer is a fixed text made from the prompt."""
    daemon_threads = True
    request_queue_size = 256  # a burst of concurrent clients must not be refused at connect

    def __init__(self, address, model_name, device="cpu", max_batch=256, faults=None, latency=0.0,
                 api_key=None, served_models=None, n_policy="honour", reply=None, sampling_seed=0):
        super().__init__(address, Handler)
        self.reply = reply   # echo: this fixed text as every answer (None: " and so on after <the prompt's last word>")
        # like a real provider: a wrong key gets 401 (its message quoting the key), an unknown model 404
        self.api_key, self.served_models = api_key, served_models
        self.model_name, self.max_batch, self.latency = model_name, max_batch, latency
        self.faults = faults or FaultPlan()
        self.fault_random = random.Random(self.faults.seed)
        self.lock = threading.Lock()
        self.requests_received = self.requests_served = self.in_flight = self.max_in_flight = 0
        self.faults_injected = collections.Counter()
        self.bodies = collections.deque(maxlen=1000)   # the latest request bodies, for tests to read
        # n > 1 in one request: "honour" it (OpenAI, vLLM), "refuse" it with a 400, "ignore" it (one choice), or
        # "double" it (a hostile server sending twice the choices asked for)
        self.n_policy = n_policy
        # the usage figures of every answered request, summed: what a provider would bill
        self.usage = collections.Counter()
        # a prefix cache as providers report it: the longest token prefix shared with an earlier prompt is "cached"
        self.prompts_seen = collections.deque(maxlen=512)
        self.sampling_seed, self.requests_seen = sampling_seed, collections.Counter()
        self.model = self.tokenizer = None
        if model_name != "echo":
            self.model, self.tokenizer = models.load_model(model_name, "teacher", torch.device(device))
            self.model.eval()
            self.waiting = queue.Queue()
            threading.Thread(target=self.generate_batches, daemon=True).start()

    def next_fault(self):
        """None for a well-behaved request, else the kind of fault to inject; counts every request."""
        with self.lock:
            self.requests_received += 1
            if self.fault_random.random() >= self.faults.rate:
                return None
            kind = self.fault_random.choice(self.faults.kinds)
            self.faults_injected[kind] += 1
            return kind

    def request_seed(self, prompt: str, settings: tuple, n: int) -> int:
        """The seed of one request's sampling: the server's seed, the request itself, and how many identical
        requests came before it. A run's answers then do not depend on which requests arrive together, on
        their order, or on the trainer's own random state (issue #33 item 19)."""
        key = json.dumps([self.sampling_seed, prompt, settings, n])
        with self.lock:
            self.requests_seen[key] += 1
            occurrence = self.requests_seen[key]
        return int.from_bytes(hashlib.sha256(f"{key}#{occurrence}".encode()).digest()[:8], "little")

    def complete(self, prompt: str, max_tokens: int, temperature: float, n: int, templated=False):
        """n continuations of prompt, the tokens each used, whether each ended on a stop token, and the
        prompt's length in tokens. A templated prompt already holds its special tokens (BOS); a raw one gets them."""
        if self.model is None:
            text = self.reply if self.reply is not None else \
                f" and so on after {prompt.split()[-1] if prompt.split() else 'nothing'}"
            with self.lock:
                self.requests_served += 1
            return [text] * n, [len(text.split())] * n, [True] * n, len(prompt.split())
        done = concurrent.futures.Future()
        settings = (max_tokens, temperature, templated)
        self.waiting.put((settings, prompt, n, done, self.request_seed(prompt, settings, n)))
        return done.result()

    def generate_batches(self):
        while True:
            batch = [self.waiting.get()]
            time.sleep(0.005)  # let the rest of a burst arrive
            while not self.waiting.empty() and len(batch) < self.max_batch:
                batch.append(self.waiting.get())
            for settings in {item[0] for item in batch}:
                group = [item for item in batch if item[0] == settings]
                try:
                    results = self.generate_group(settings, group)
                except Exception as error:  # reported to each waiting request as a 500
                    results = [error] * len(group)
                for (_, _, _, done, _), result in zip(group, results):
                    done.set_exception(result) if isinstance(result, Exception) else done.set_result(result)

    def generate_group(self, settings, group):
        max_tokens, temperature, templated = settings
        prompts = [prompt for _, prompt, n, _, _ in group for _ in range(n)]
        encoded = [self.tokenizer(p, add_special_tokens=not templated)["input_ids"] for p in prompts]
        batch = left_pad(encoded, self.tokenizer.pad_token_id, self.model.device)
        # sampled with the requests' own generators (GumbelSampler), never torch's global random state, which
        # the trainer in the same process draws from on its own thread
        sampler = GumbelSampler([seed for *_, seed in group], [n for _, _, n, _, _ in group], temperature) \
            if temperature > 0 else None
        new_ids = generate(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"],
                                   max_tokens, 0.0, watch=sampler)
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        stops = torch.tensor(stop_token_ids(self.model, self.tokenizer), device=new_ids.device)
        used = tokens_generated(new_ids, stops).tolist()
        stopped = torch.isin(new_ids, stops).any(1).tolist()   # else it ran out of max_tokens
        results, start = [], 0
        for _, _, n, _, _ in group:
            results.append((texts[start:start + n], used[start:start + n], stopped[start:start + n],
                            len(encoded[start])))
            start += n
        with self.lock:
            self.requests_served += len(group)
        return results

    def cached_tokens(self, prompt: str, templated: bool) -> int:
        """How many of the prompt's first tokens an earlier prompt shared (and a prefix cache would have kept)."""
        tokens = (prompt.split() if self.model is None
                  else self.tokenizer(prompt, add_special_tokens=not templated)["input_ids"])
        with self.lock:
            best = 0
            for earlier in self.prompts_seen:
                shared = 0
                while shared < min(len(earlier), len(tokens)) and earlier[shared] == tokens[shared]:
                    shared += 1
                best = max(best, shared)
            self.prompts_seen.append(tokens)
        return best

    def chat_prompt(self, messages: list) -> str:
        content = messages[-1]["content"]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return content[len(CHAT_HEAD):] if content.startswith(CHAT_HEAD) else content


MOST_TOKENS, MOST_SAMPLES = 4096, 128   # what one request may ask for


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet: tests read stderr
        pass

    def leave(self):
        """This request stops counting as in flight: just before its reply goes out, since the
        client may send its next request as soon as the reply arrives."""
        if getattr(self, "in_flight", False):
            with self.server.lock:
                self.server.in_flight -= 1
            self.in_flight = False

    def reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.leave()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self.reply(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        self.in_flight = True
        try:
            time.sleep(self.server.latency)
            if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
                given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                return self.reply(401, {"error": {"message": f"Incorrect API key provided: {given}",
                                                  "type": "invalid_request_error", "code": "invalid_api_key"}})
            fault = self.server.next_fault()
            if fault in ("429", "500", "malformed"):
                return self.misbehave(fault)
            if fault == "timeout":
                time.sleep(self.server.faults.hang_seconds)
            self.answer(refuse=fault == "refusal", empty=fault == "empty", think=fault)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a "timeout" fault)
            pass
        finally:
            self.leave()

    def misbehave(self, fault: str):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.leave()
        if fault == "429":
            data = json.dumps({"error": {"message": "rate limited", "type": "rate_limit_error"}}).encode()
            self.send_response(429)
            self.send_header("Retry-After", f"{self.server.faults.retry_after:g}")
        elif fault == "500":
            data = json.dumps({"error": {"message": "internal error", "type": "server_error"}}).encode()
            self.send_response(500)
        else:
            data = b'{"id": "cmpl-broken", "choices": [{"text": "unterminated'
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def answer(self, refuse=False, empty=False, think=None):
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.server.bodies.append(body)
            chat = self.path.endswith("/chat/completions")
            if not chat and not self.path.endswith("/completions"):
                return self.reply(404, {"error": {"message": "not found"}})
            prompt = self.server.chat_prompt(body["messages"]) if chat else body["prompt"]
            if isinstance(prompt, list):
                prompt = prompt[0]
            limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16   # the latter: reasoning models
            settings = (int(limit), float(body.get("temperature", 1.0)), int(body.get("n", 1)))
            if not isinstance(prompt, str):
                raise TypeError("the prompt must be text")
            # one generation thread serves every client: a request may not hold it for ever (n = 20,000,000)
            if not (1 <= settings[0] <= MOST_TOKENS and 1 <= settings[2] <= MOST_SAMPLES
                    and 0 <= settings[1] < float("inf")):
                raise ValueError(f"max_tokens must be 1-{MOST_TOKENS}, n 1-{MOST_SAMPLES}, temperature finite")
            if settings[2] > 1 and self.server.n_policy == "refuse":
                return self.reply(400, {"error": {"message": "n > 1 is not supported", "type": "invalid_request_error",
                                                  "param": "n"}})
            if self.server.n_policy == "ignore":
                settings = settings[:2] + (1,)
            if self.server.n_policy == "double":   # a hostile server: twice the choices asked for
                settings = settings[:2] + (2 * settings[2],)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, RecursionError) as error:   # "messages": []
            return self.reply(400, {"error": {"message": f"bad request: {str(error)[:200]}",
                                              "type": "invalid_request_error"}})
        if self.server.served_models and body.get("model") not in self.server.served_models:
            return self.reply(404, {"error": {"message": f"The model '{body.get('model')}' does not exist",
                                              "type": "invalid_request_error", "code": "model_not_found"}})
        try:
            templated = chat and bool(getattr(self.server.tokenizer, "chat_template", None))
            texts, used, stopped, prompt_tokens = self.server.complete(prompt, *settings, templated=templated)
        except Exception as error:
            return self.reply(500, {"error": {"message": f"generation failed: {type(error).__name__}"}})
        if refuse:
            texts, stopped = ["I'm sorry, but I can't help with that."] * len(texts), [True] * len(texts)
        if empty:
            texts, stopped = [""] * len(texts), [False] * len(texts)
        if think == "think":
            texts = [f"<think>The user wants the next words.</think>\n{t}" for t in texts]
        if think == "think_unfinished":
            texts, stopped = ["<think>The user wants the next"] * len(texts), [False] * len(texts)
        finish = ["stop" if s else "length" for s in stopped]
        cached = self.server.cached_tokens(prompt, templated)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                       for i, (t, f) in enumerate(zip(texts, finish))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                       for i, (t, f) in enumerate(zip(texts, finish))]
        self.reply(200, {
            "id": f"cmpl-{time.time_ns()}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model", self.server.model_name), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(used),
                      "total_tokens": prompt_tokens + sum(used), "prompt_tokens_details": {"cached_tokens": cached}}})
        with self.server.lock:
            self.server.usage.update(requests=1, prompt_tokens=prompt_tokens, completion_tokens=sum(used),
                                     cached_tokens=cached)


def start_in_thread(model_name="toy", host="127.0.0.1", port=0, **options) -> ModelServer:
    """Start a server on a free loopback port in a background thread; .server_address has the port.
    options: faults, latency, api_key, served_models, n_policy, reply (see ModelServer)."""
    server = ModelServer((host, port), model_name, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="'toy', a local folder, or a hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that misbehave")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed: each request's answers follow from it and "
                        "the request alone, whatever arrives with it")
    args = parser.parse_args()
    server = ModelServer((args.host, args.port), args.model, faults=FaultPlan(args.fault_rate), latency=args.latency,
                         sampling_seed=args.seed)
    print(f"serving {args.model} on http://{args.host}:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
