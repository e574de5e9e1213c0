"""A fault-injecting stand-in for vLLM's OpenAI-compatible server, for fault tests only.

It answers chat completions from a table of known translations (real Multi30K references), and
injects the faults a real deployment sees: HTTP 500s, requests that hang past the client's timeout,
and a process that dies mid-run. Success-path tests use a real vLLM server instead.

    python tests/fault_server.py --model NAME --port P --pairs pairs.jsonl
        [--fail-first N] [--hang-first N] [--die-after N] [--counter FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LANGUAGES = {"German": "de", "French": "fr"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pairs", required=True, help="jsonl of {en, lang, reference}")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hang-first", type=int, default=0)
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--counter", default=None, help="append one line per completion request")
    args = parser.parse_args()
    table = {}
    with open(args.pairs, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            table[(row["en"], row["lang"])] = row["reference"]
    lock = threading.Lock()
    seen = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {})
            else:
                self._reply(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen[0] += 1
                n = seen[0]
                if args.counter:
                    with open(args.counter, "a") as f:
                        f.write(f"{n}\n")
            if args.die_after and n > args.die_after:
                os._exit(1)  # the server dies mid-run, the connection drops
            if n <= args.fail_first:
                return self._reply(500, {"error": "injected failure"})
            if n <= args.fail_first + args.hang_first:
                time.sleep(30)
                return self._reply(200, {})
            content = request["messages"][-1]["content"]
            language = re.search(r"into (\w+)\.", content).group(1)
            english = content.split("\n\n", 1)[1]
            answer = table.get((english, LANGUAGES.get(language)), english)  # unknown: echo (rejected)
            self._reply(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": args.model,
                              "created": 0, "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": answer}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog of 5 refuses bursts, which the client counts as sent

    Server((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
