"""A fault-injecting stand-in for vLLM's OpenAI-compatible server, for fault tests only.

It answers chat completions from a table of known translations (real Multi30K references), and
injects the faults a real deployment sees: HTTP errors (500, 429, 400...), requests that hang past the
client's timeout, a process that dies mid-run, answers that are not chat completions (garbage, no
choices, a non-text message), oversized answers, a /health that answers late once it has work (a
busy server), and, like `vllm serve --api-key`, a bearer token required on /v1 (401 without it). It
measures what admission must bound: the peak number of completion requests in flight at once, and
the time-weighted mean from the first one's start to the last one's end (GET /stats). Success-path tests use a real vLLM server instead.

    python tests/fault_server.py --model NAME --port P --pairs pairs.jsonl
        [--fail-first N [--fail-status CODE]] [--hang-first N] [--die-after N] [--counter FILE] [--bodies FILE]
        [--bad-response garbage|empty_choices|content_not_text] [--answer-chars N] [--api-key KEY]
        [--delay S] [--slow-health S] [--starts-file FILE] [--replies FILE] [--answer-unknown]
"""
from __future__ import annotations

import argparse
import hashlib
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
    parser.add_argument("--bodies", default=None, help="append each completion request's JSON body, one a line")
    parser.add_argument("--fail-status", type=int, default=500, help="the status of the --fail-first answers")
    parser.add_argument("--bad-response", choices=("garbage", "empty_choices", "content_not_text"), default=None,
                        help="answer 200 with something that is not a usable chat completion")
    parser.add_argument("--answer-chars", type=int, default=0, help="answer with this many characters of German")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (as vLLM)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each completion takes")
    parser.add_argument("--slow-health", type=float, default=0.0,
                        help="seconds /health takes once completions have started (a busy server)")
    parser.add_argument("--starts-file", default=None, help="append this process's id when it starts")
    parser.add_argument("--replies", default=None,
                        help="a JSON list of {content, finish_reason}: the n-th request gets reply n (cycling), "
                             "whatever it asks (the recaption stage's bad answers)")
    parser.add_argument("--answer-unknown", action="store_true",
                        help="answer a text the table lacks with the reference of the known text closest in length "
                             "(a stand-in where no reference exists, e.g. a VLM's description), and a context "
                             "request '{text} ### ({context})' in kind, keeping the structure, except where the "
                             "text's sha256 starts with an odd digit: that answer loses its context")
    args = parser.parse_args()
    replies = json.load(open(args.replies, encoding="utf-8")) if args.replies else None
    if args.starts_file:
        with open(args.starts_file, "a") as f:
            f.write(f"{os.getpid()}\n")
    table = {}
    with open(args.pairs, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            table[(row["en"], row["lang"])] = row["reference"]
    lock = threading.Lock()
    seen = [0]
    in_flight = {"now": 0, "peak": 0, "area": 0.0, "first": None, "last": None}

    def step(change: int) -> None:
        """Count one request in or out, integrating in-flight over time for the mean."""
        now = time.monotonic()
        if in_flight["first"] is None:
            in_flight["first"] = now
        else:
            in_flight["area"] += in_flight["now"] * (now - in_flight["last"])
        in_flight["now"] += change
        in_flight["last"] = now

    def enter() -> None:
        with lock:
            step(+1)
            in_flight["peak"] = max(in_flight["peak"], in_flight["now"])

    def leave() -> None:
        with lock:
            step(-1)

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

        def _authorized(self) -> bool:
            """vLLM's check: /v1 paths need the bearer token when the server has one; /health does not."""
            if args.api_key is None or not self.path.startswith("/v1"):
                return True
            if self.headers.get("Authorization") == f"Bearer {args.api_key}":
                return True
            self._reply(401, {"error": "Unauthorized"})
            return False

        def do_GET(self):
            if not self._authorized():
                return
            if self.path == "/health":
                time.sleep(args.slow_health if seen[0] else 0)
                self._reply(200, {})
            elif self.path == "/stats":
                with lock:  # the mean is over the time from the first request's start to the last one's end
                    span = (in_flight["last"] or 0) - (in_flight["first"] or 0)
                    self._reply(200, {"requests": seen[0], "in_flight": in_flight["now"],
                                      "peak_in_flight": in_flight["peak"],
                                      "mean_in_flight": in_flight["area"] / span if span else 0.0})
            else:
                self._reply(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self._authorized():
                return
            enter()
            try:
                self._complete(request)
            finally:
                leave()

        def _complete(self, request: dict) -> None:
            with lock:
                seen[0] += 1
                n = seen[0]
                if args.counter:
                    with open(args.counter, "a") as f:
                        f.write(f"{n}\n")
                if args.bodies:
                    with open(args.bodies, "a", encoding="utf-8") as f:
                        f.write(json.dumps(request, ensure_ascii=False) + "\n")
            if args.die_after and n > args.die_after:
                os._exit(1)  # the server dies mid-run, the connection drops
            if n <= args.fail_first:  # vLLM's error body
                return self._reply(args.fail_status, {"error": {
                    "message": f"injected failure (HTTP {args.fail_status})", "type": "InjectedError",
                    "param": None, "code": args.fail_status}})
            if n <= args.fail_first + args.hang_first:
                time.sleep(30)
                return self._reply(200, {})
            time.sleep(args.delay)
            if args.bad_response == "garbage":
                data = b"<html><body>502 Bad Gateway</body></html> {not json"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if replies:
                reply = replies[(n - 1) % len(replies)]
                return self._reply(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": args.model,
                                         "created": 0, "choices": [{"index": 0, "finish_reason": reply["finish_reason"],
                                                                    "message": {"role": "assistant",
                                                                                "content": reply["content"]}}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            content = request["messages"][-1]["content"]
            language = re.search(r"into (\w+)\.", content).group(1)
            english = content.split("\n\n", 1)[1]
            answer = table.get((english, LANGUAGES.get(language)), english)  # unknown: echo (rejected)
            if args.answer_unknown:
                answer = answer_in_kind(english, LANGUAGES.get(language))
            if args.answer_chars:
                sentence = "Ein brauner Hund läuft schnell über die grüne Wiese am Fluss. "
                answer = (sentence * (args.answer_chars // len(sentence) + 1))[:args.answer_chars].strip()
            message = {"role": "assistant", "content": answer}
            if args.bad_response == "content_not_text":
                message["content"] = {"text": answer}
            choices = [] if args.bad_response == "empty_choices" else [
                {"index": 0, "finish_reason": "stop", "message": message}]
            self._reply(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": args.model,
                              "created": 0, "choices": choices,
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def closest(text: str, lang: str) -> str:
        """The table's answer for `text`, else the reference of its known text closest in length."""
        known = sorted((abs(len(en) - len(text)), en) for en, l in table if l == lang)
        return table.get((text, lang)) or table[(known[0][1], lang)]

    def answer_in_kind(english: str, lang: str) -> str:
        with_context = re.fullmatch(r"(.*?) ### \((.*)\)", english, re.S)
        if with_context is None:
            return closest(english, lang)
        text, context = with_context.groups()
        if int(hashlib.sha256(text.encode("utf-8")).hexdigest()[0], 16) % 2:
            return closest(text, lang)  # the context is lost: the client asks again without it
        return f"{closest(text, lang)} ### ({closest(context, lang)})"

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog of 5 refuses bursts, which the client counts as sent

    Server((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
