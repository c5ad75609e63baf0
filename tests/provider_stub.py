"""A stand-in LLM provider on 127.0.0.1 speaking the OpenAI and Anthropic wire formats
(JSON and server-sent events), so tests drive the real provider SDKs over real sockets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 10}}
ANTHROPIC_USAGE = {"input_tokens": 20, "output_tokens": 45, "cache_read_input_tokens": 100,
                   "cache_creation_input_tokens": 5}


class _Handler(BaseHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        if body.get("model") == "rate-limited":
            self._json(429, {"error": {"message": "slow down", "type": "rate_limit_error",
                                       "code": "rate_limit_exceeded"}})
        elif self.path.endswith("/chat/completions"):
            self._openai(body)
        elif self.path.endswith("/messages"):
            self._anthropic(body)
        else:
            self._json(404, {"error": {"message": "no such path"}})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, dict[str, Any] | str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            self.wfile.write(frame.encode())
            self.wfile.flush()
        self.close_connection = True

    def _openai(self, body: dict[str, Any]) -> None:
        model = body["model"]
        if not body.get("stream"):
            self._json(200, {"id": "c1", "object": "chat.completion", "created": 1,
                             "model": model, "usage": OPENAI_USAGE, "choices": [
                                 {"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "done"}}]})
            return
        def chunk(delta: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
            choices = [{"index": 0, "delta": delta, "finish_reason": None}] if delta else []
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": choices, "usage": usage}
        events: list[tuple[str | None, dict[str, Any] | str]] = [
            (None, chunk({"role": "assistant", "content": "do"})),
            (None, chunk({"content": "ne"})),
        ]
        if body.get("stream_options", {}).get("include_usage"):
            events.append((None, chunk({}, OPENAI_USAGE)))
        events.append((None, "[DONE]"))
        self._sse(events)

    def _anthropic(self, body: dict[str, Any]) -> None:
        model = body["model"]
        message = {"id": "m1", "type": "message", "role": "assistant", "model": model,
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "content": [{"type": "text", "text": "done"}], "usage": ANTHROPIC_USAGE}
        if not body.get("stream"):
            self._json(200, message)
            return
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}
        self._sse([
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "done"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}),
            ("message_stop", {"type": "message_stop"}),
        ])


@contextmanager
def provider(delay: float = 0.0) -> Iterator[str]:
    """Run the stub; yields its base URL (``http://127.0.0.1:PORT``)."""
    handler = type("Handler", (_Handler,), {"delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
