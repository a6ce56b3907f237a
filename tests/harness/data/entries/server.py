"""A competitor's container stand-in: HELM's HTTP protocol over the standard library, no model.

Used by the `harness run` tests so that a build takes a second, not minutes; BEHAVIOUR (an
environment variable set in each test entry's Dockerfile) picks how it misbehaves:

    answer-a        answers every /process with "A" (the right letter in the tests' task)
    answer-c        answers "C" (always wrong)
    answer-share    answers "A" to question number i (the tests' task numbers its questions) when
                    (i * golden ratio) mod 1 < SHARE, else "C": about SHARE right on any first n
    crash           exits with a traceback before serving
    never-healthy   serves /health with 503 forever
    oom             allocates memory until the container's limit kills it
    hang-tokenize   answers /process but never /tokenize
    slow            answers "A" after SLOW_S seconds (default 1)

Tokens are the UTF-8 bytes of the text (one token per byte), so /tokenize and /decode agree.
"""

import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOUR = os.environ.get("BEHAVIOUR", "answer-a")
SHARE = float(os.environ.get("SHARE", "0.5"))
GOLDEN = (5**0.5 - 1) / 2


def _question(prompt: str) -> int:
    """The number of the question asked: the last "letter number N" in the prompt."""
    return int(re.findall(r"letter number (\d+)", prompt)[-1])


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._send(404, {"detail": "not found"})
        elif BEHAVIOUR == "never-healthy":
            self._send(503, {"status": "loading"})
        else:
            self._send(200, {"status": "ok"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self._send(*self._answer(self.path, request))

    @staticmethod
    def _answer(path: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/process":
            if BEHAVIOUR == "slow":
                time.sleep(float(os.environ.get("SLOW_S", "1")))
            text = "C" if BEHAVIOUR == "answer-c" else "A"
            if BEHAVIOUR == "answer-share":
                text = "A" if (_question(request["prompt"]) * GOLDEN) % 1 < SHARE else "C"
            token = {"text": text, "logprob": -0.1, "top_logprob": {text: -0.1}}
            return 200, {"text": text, "tokens": [token], "logprob": -0.1, "request_time": 0.01}
        if path == "/tokenize":
            if BEHAVIOUR == "hang-tokenize":
                time.sleep(3600)
            tokens = list(request["text"].encode())
            if request.get("truncation") and request.get("max_length"):
                tokens = tokens[: request["max_length"]]
            return 200, {"tokens": tokens, "request_time": 0.0}
        if path == "/decode":
            text = bytes(request["tokens"]).decode(errors="replace")
            return 200, {"text": text, "request_time": 0.0}
        return 404, {"detail": "not found"}

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(format % args + "\n")


def main() -> None:
    if BEHAVIOUR == "crash":
        raise RuntimeError("the model folder is missing: /opt/model")
    if BEHAVIOUR == "oom":
        hog: list[bytearray] = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))
    ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()


if __name__ == "__main__":
    main()
