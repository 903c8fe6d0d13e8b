"""``llama-aot serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one Engine.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed as
server-sent events (``"stream": true``) or not, with temperature / top_p / max_tokens / stop / seed and
usage counts. The package's compiled KV caches hold one sequence, so requests queue: one generates at a
time, in a worker thread, while the event loop keeps accepting requests and streaming pieces. Every request
reuses the cached prefix it shares with the one before (a chat's earlier turns, a common system prompt).
Errors are OpenAI's JSON error objects with a 4xx status; the server keeps serving.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``) at
run time, and string annotations of names imported inside ``build_app`` would not resolve.
"""


import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from .chat import Chat, complete
from .engine import Engine
from .errors import LlamaAotError


class RequestError(Exception):
    """A bad request: answered with ``status`` and an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]


class Server:
    """The state the endpoints share: the engine, its chat template, and the lock that queues requests."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine = engine
        self.model_name = model_name
        self._chat: Chat | None = None
        self.lock = threading.Lock()
        self.created = int(time.time())

    @property
    def chat(self) -> Chat:
        """The chat template (its turns are not used here), loaded at the first chat request: a package
        without a template still serves /v1/completions."""
        if self._chat is None:
            try:
                self._chat = Chat(self.engine)
            except LlamaAotError as e:
                raise RequestError(400, f"{e} (/v1/completions works without one)", "messages") from None
        return self._chat

    # --- request parsing --------------------------------------------------------------------------
    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                               "model", "model_not_found")

    def sampling(self, body: dict, default_max_tokens: int | None) -> Sampling:
        def number(name, default, lo, hi, kind=float):
            value = body.get(name, default)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise RequestError(400, f"'{name}' must be a number, got {value!r}", name)
            if not lo <= value <= hi:
                raise RequestError(400, f"'{name}' must be between {lo} and {hi}, got {value}", name)
            return kind(value)

        room = self.engine.context_window
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = number(name, default_max_tokens, 1, 10**9, int)
        if max_tokens is not None and max_tokens >= room and not self.engine.unbounded:
            raise RequestError(400, f"{name} is {max_tokens}, but this model's context window is {room} "
                                    "tokens, prompt included", name, "context_length_exceeded")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop or []
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise RequestError(400, "'stop' must be a string or a list of up to 4 strings", "stop")
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n = 1 is supported", "n")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(400, f"'seed' must be an integer, got {seed!r}", "seed")
        return Sampling(max_tokens, number("temperature", 1.0, 0.0, 2.0), number("top_p", 1.0, 0.0, 1.0), seed, stop)

    def prompt_ids(self, kind: str, body: dict) -> list[int]:
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
            try:
                ids = self.chat.prompt_ids([_text_message(m) for m in messages])
            except LlamaAotError as e:
                raise RequestError(400, str(e), "messages") from None
        else:
            if not (self.engine.package_dir / "tokenizer.json").is_file():  # replies are text
                raise RequestError(400, f"{self.engine.package_dir} has no tokenizer.json to turn replies into text: "
                                        "compile it from a checkpoint that has one", "prompt")
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str) and prompt:
                try:
                    ids = self.engine.encode(prompt)
                except LlamaAotError as e:
                    raise RequestError(400, str(e), "prompt") from None
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                ids = list(prompt)
                if not all(0 <= t < self.engine.vocab_size for t in ids):
                    raise RequestError(400, f"a prompt token id is outside [0, {self.engine.vocab_size})", "prompt")
            else:
                raise RequestError(400, "'prompt' must be a non-empty string or list of token ids (one prompt "
                                        "per request)", "prompt")
        if len(ids) >= self.engine.context_window and not self.engine.unbounded:
            raise RequestError(400, f"the prompt is {len(ids)} tokens, but this model's context window is "
                                    f"{self.engine.context_window}", "messages" if kind == "chat" else "prompt",
                               "context_length_exceeded")
        return ids

    # --- generation -------------------------------------------------------------------------------
    def generate(self, ids: list[int], s: Sampling, on_text=None) -> tuple[str, int, str]:
        """(text, completion tokens, finish reason), one request at a time."""
        room = self.engine.context_window - len(ids)
        max_tokens = s.max_tokens if s.max_tokens is not None else room
        if not self.engine.unbounded:
            max_tokens = min(max_tokens, room)
        with self.lock:
            text, gen = complete(self.engine, ids, max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p,
                                 seed=s.seed, stop=s.stop, on_text=on_text)
        ended_on_eos = bool(gen.token_ids) and gen.token_ids[-1] in self.engine.eos_token_ids  # not in the text
        return text, len(gen.token_ids) - ended_on_eos, "stop" if gen.stop_reason == "stop" else "length"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _text_message(m) -> dict:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise RequestError(400, f"each message needs a role and content, got {m!r}"[:300], "messages")
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise RequestError(400, "only text content parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    return {"role": m["role"], "content": content}


def build_app(server: Server):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="llama-aot", docs_url=None, redoc_url=None)

    def error(status: int, message: str, param=None, code=None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)

    @app.exception_handler(RequestError)
    async def _request_error(_, e: RequestError):
        return error(e.status, str(e), e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e):
        return error(e.status_code, str(e.detail))

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "llama-aot"}]}

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    async def completion(request: Request, kind: str):
        body = await body_of(request)
        server.check_model(body)
        s = server.sampling(body, None if kind == "chat" else 16)
        ids = server.prompt_ids(kind, body)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        head = {"id": rid, "created": created, "model": server.model_name}
        if not body.get("stream"):
            text, n, finish = await asyncio.to_thread(server.generate, ids, s)
            usage = _usage(len(ids), n)
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                          "logprobs": None}
                return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            return {**head, "object": "text_completion", "choices": [choice], "usage": usage}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(server, kind, head, ids, s, include_usage), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await completion(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await completion(request, "text")

    return app


async def _events(server: Server, kind: str, head: dict, ids: list[int], s: Sampling, include_usage: bool):
    """Server-sent events: one chunk per streamed piece, the finish reason, usage if asked, [DONE]."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(piece: str | None, finish: str | None, first: bool = False) -> str:
        if kind == "chat":
            delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**head, 'object': obj, 'choices': [choice]})}\n\n"

    def work():
        try:
            result = server.generate(ids, s, on_text=lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece))
            loop.call_soon_threadsafe(queue.put_nowait, result)
        except Exception as e:  # reported in the stream: the status line has gone out already
            loop.call_soon_threadsafe(queue.put_nowait, e)

    worker = loop.run_in_executor(None, work)
    if kind == "chat":
        yield chunk(None, None, first=True)
    while True:
        item = await queue.get()
        if isinstance(item, str):
            yield chunk(item, None)
            continue
        if isinstance(item, Exception):
            yield f"data: {json.dumps({'error': {'message': str(item), 'type': 'server_error'}})}\n\n"
            break
        _, n, finish = item
        yield chunk(None, finish)
        if include_usage:
            usage = _usage(len(ids), n)
            yield f"data: {json.dumps({**head, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
        break
    await worker
    yield "data: [DONE]\n\n"


def serve(engine: Engine, host: str, port: int, model_name: str) -> None:
    """Bind first (a port in use is a one-line error), then hand the socket to uvicorn."""
    try:
        import uvicorn
    except ImportError:
        raise LlamaAotError("serve needs fastapi and uvicorn: pip install -e . (they are llama-aot dependencies)") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LlamaAotError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    server = Server(engine, model_name)
    config = uvicorn.Config(build_app(server), log_level="warning", access_log=False)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"serving {model_name} at http://{shown}:{bound}/v1 (Ctrl-C stops)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
