"""Teacher pool throughput against one-at-a-time calls, side by side in one run.

    python bench/teacher_pool.py                  # 160 requests, 100 ms each, concurrency 16
    python bench/teacher_pool.py --latency 0.25 --requests 320 --concurrency 32

Both talk to the same OpenAI-compatible server on 127.0.0.1 (omniopd_tools/serve.py with
--model echo), which waits a fixed time per request and answers: the measurement is the
client's alone. "sequential" is the plain openai client called in a loop, the code a
first version would have; "pool" is scale/teachers.py's TeacherPool (no cache, so every
request goes over HTTP). Prints requests per second for both and their ratio.
"""

import argparse
import os
import time
from pathlib import Path

from scale.teachers import TeacherPool
from omniopd_tools.serve import start_in_thread

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    import openai
    os.environ.setdefault("OPENAI_API_KEY", "loopback-no-key-needed")
    server = start_in_thread("echo", latency=args.latency)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    prefixes = [f"Question: request {i}\nAnswer: " for i in range(args.requests)]

    client = openai.OpenAI(base_url=url, max_retries=0)
    started = time.perf_counter()
    for prefix in prefixes:
        client.completions.create(model="toy", prompt=prefix, max_tokens=16, temperature=1.0)
    sequential = args.requests / (time.perf_counter() - started)

    pool = TeacherPool(["openai:toy"], url, mode="completion", concurrency=args.concurrency)
    started = time.perf_counter()
    answers = pool.continuations(prefixes, n=1, max_tokens=16)
    pooled = args.requests / (time.perf_counter() - started)
    assert all(answers) and pool.failures == 0
    print(f"{args.requests} requests, {args.latency * 1000:.0f} ms each on the server")
    print(f"sequential (openai client in a loop): {sequential:7.1f} requests/s")
    print(f"pool (concurrency {args.concurrency}):              {pooled:7.1f} requests/s "
          f"(server saw at most {server.max_in_flight} at once)")
    print(f"ratio: {pooled / sequential:.1f}x (ideal {args.concurrency}x)")
    server.shutdown()


if __name__ == "__main__":
    main()
