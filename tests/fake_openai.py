"""A stand-in for an OpenAI-compatible provider, on a real socket, speaking the documented
wire format (POST /v1/chat/completions, JSON or text/event-stream; POST /v1/embeddings).

Behaviour is chosen by the upstream model name the gateway sends:

* ``echo``        a chat.completion whose message content is the request body it received
* ``stream``      a normal stream: 5 content chunks, a finish chunk, a usage-only chunk, [DONE]
* ``slow-stream`` the same, one event every 50 ms (for disconnect and drain tests)
* ``break``       a stream that stops after two chunks and closes the connection
* ``err-NNN``     an OpenAI error body with status NNN
* ``slow``        a normal answer after 300 ms (holds overlap under concurrency)
* ``hang``        accepts the request and never answers (first-byte timeout)
* ``embed``       an embeddings list
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chunk(
    model: str,
    delta: dict,
    finish: str | None = None,
    usage: dict | None = None,
    choices: bool = True,
) -> bytes:
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if choices
        else [],
    }
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
WORDS = ["Hello", " from", " the", " fake", " upstream"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        body = json.loads(raw)
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        model = body.get("model", "")
        if self.path.endswith("/embeddings"):
            n = len(body["input"]) if isinstance(body["input"], list) else 1
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i in range(n)
                    ],
                    "model": model,
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                },
            )
            return
        if model.startswith("err-"):
            status = int(model[4:])
            self.send_json(
                status,
                {
                    "error": {
                        "message": f"fake upstream says {status}",
                        "type": "fake_error",
                        "param": None,
                        "code": f"fake_{status}",
                    }
                },
            )
            return
        if model == "hang":
            time.sleep(3)
            self.close_connection = True
            return
        if model == "slow":
            time.sleep(0.3)
            model = "stream"
        if model == "echo":
            self.send_json(
                200,
                {
                    "id": "chatcmpl-echo",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": raw.decode()},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": USAGE,
                },
            )
            return
        if body.get("stream"):
            self.stream(model, body)
            return
        self.send_json(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            },
        )

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream(self, model: str, body: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = 0.05 if model == "slow-stream" else 0.0
        events = [chunk(model, {"role": "assistant", "content": ""})]
        events += [chunk(model, {"content": w}) for w in WORDS]
        events.append(chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk(model, {}, usage=USAGE, choices=False))
        events.append(b"data: [DONE]\n\n")
        try:
            for i, ev in enumerate(events):
                if model == "break" and i == 3:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.write_chunk(ev)
                if delay:
                    time.sleep(delay)
            self.write_chunk(b"")
            self.server.completed_streams += 1
        except (BrokenPipeError, ConnectionResetError):
            self.server.aborted_streams += 1
            self.close_connection = True


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.completed_streams = 0
        self.aborted_streams = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
