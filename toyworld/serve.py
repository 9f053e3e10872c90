"""A small OpenAI-compatible HTTP server for a local Hugging Face model.

    python -m toyworld.serve --model toy --port 8000
    python omniopd.py --teacher openai:toy --teacher-base-url http://127.0.0.1:8000/v1

It answers POST /v1/completions and POST /v1/chat/completions in the OpenAI wire
format, so the real `openai` client (and OmniOPD's OpenAITeacher) can reach the
toy teacher as a black box over real HTTP: the tests and benchmarks use it on
127.0.0.1. For real models, serve with vLLM or SGLang instead.

The toy teacher has no chat template, so for chat requests the server stands in
for an instruction-following model: it recognises omniopd.CHAT_CONTINUE_PROMPT
and continues the prefix inside it; models with a chat template get the messages
through that template.
"""

import argparse
import concurrent.futures
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import omniopd

CHAT_HEAD = omniopd.CHAT_CONTINUE_PROMPT.split("{prefix}")[0]


class ModelServer(ThreadingHTTPServer):
    """Serves one model. Requests that arrive together are generated together: a worker thread takes
    every waiting request with the same sampling settings and runs them as one batched generate call."""
    daemon_threads = True

    def __init__(self, address, model_name, device="cpu", max_batch=256):
        super().__init__(address, Handler)
        self.model, self.tokenizer = omniopd.load_model(model_name, "teacher", torch.device(device))
        self.model.eval()
        self.model_name, self.max_batch = model_name, max_batch
        self.waiting = queue.Queue()
        self.requests_served = 0
        threading.Thread(target=self.generate_batches, daemon=True).start()

    def complete(self, prompt: str, max_tokens: int, temperature: float, n: int):
        """n continuations of prompt, the tokens each used, and the prompt's length in tokens."""
        done = concurrent.futures.Future()
        self.waiting.put(((max_tokens, temperature), prompt, n, done))
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
                for (_, _, _, done), result in zip(group, results):
                    done.set_exception(result) if isinstance(result, Exception) else done.set_result(result)

    def generate_group(self, settings, group):
        max_tokens, temperature = settings
        prompts = [prompt for _, prompt, n, _ in group for _ in range(n)]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        batch = omniopd.left_pad(encoded, self.tokenizer.pad_token_id, self.model.device)
        new_ids = omniopd.generate(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"],
                                   max_tokens, temperature)
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        used = (new_ids != self.tokenizer.pad_token_id).sum(1).tolist()
        results, start = [], 0
        for _, _, n, _ in group:
            results.append((texts[start:start + n], used[start:start + n], len(encoded[start])))
            start += n
        self.requests_served += len(group)
        return results

    def chat_prompt(self, messages: list) -> str:
        content = messages[-1]["content"]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return content[len(CHAT_HEAD):] if content.startswith(CHAT_HEAD) else content


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet: tests read stderr
        pass

    def reply(self, status: int, body: dict):
        data = json.dumps(body).encode()
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
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            chat = self.path.endswith("/chat/completions")
            if not chat and not self.path.endswith("/completions"):
                return self.reply(404, {"error": {"message": "not found"}})
            prompt = self.server.chat_prompt(body["messages"]) if chat else body["prompt"]
            if isinstance(prompt, list):
                prompt = prompt[0]
            settings = (int(body.get("max_tokens") or 16), float(body.get("temperature", 1.0)), int(body.get("n", 1)))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            return self.reply(400, {"error": {"message": f"bad request: {error}", "type": "invalid_request_error"}})
        try:
            texts, used, prompt_tokens = self.server.complete(prompt, *settings)
        except Exception as error:
            return self.reply(500, {"error": {"message": f"generation failed: {type(error).__name__}"}})
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        self.reply(200, {
            "id": f"cmpl-{time.time_ns()}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model", self.server.model_name), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(used),
                      "total_tokens": prompt_tokens + sum(used)}})


def start_in_thread(model_name="toy", host="127.0.0.1", port=0) -> ModelServer:
    """Start a server on a free loopback port in a background thread; .server_address has the port."""
    server = ModelServer((host, port), model_name)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy", help="'toy', a local folder, or a hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ModelServer((args.host, args.port), args.model)
    print(f"serving {args.model} on http://{args.host}:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
