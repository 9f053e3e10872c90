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
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import omniopd

CHAT_HEAD = omniopd.CHAT_CONTINUE_PROMPT.split("{prefix}")[0]


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model_name, device="cpu"):
        super().__init__(address, Handler)
        self.model, self.tokenizer = omniopd.load_model(model_name, "teacher", torch.device(device))
        self.model.eval()
        self.model_name = model_name
        self.lock = threading.Lock()  # one generate at a time on the one model
        self.requests_served = 0

    def complete(self, prompt: str, max_tokens: int, temperature: float, n: int):
        """n continuations of prompt and the number of tokens each used."""
        batch = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with self.lock:
            new_ids = omniopd.generate(self.model, self.tokenizer, batch.input_ids, batch.attention_mask,
                                       max_tokens, temperature, n=n)
            self.requests_served += 1
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        used = (new_ids != self.tokenizer.pad_token_id).sum(1).tolist()
        return texts, used, batch.input_ids.shape[1]

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
            texts, used, prompt_tokens = self.server.complete(
                prompt, int(body.get("max_tokens") or 16), float(body.get("temperature", 1.0)), int(body.get("n", 1)))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as error:
            return self.reply(400, {"error": {"message": f"bad request: {error}", "type": "invalid_request_error"}})
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
