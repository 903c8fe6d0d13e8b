"""`llama-aot serve` as a real server process, driven by the official openai client: chat and text completions,
streamed and not, 8 concurrent clients without cross-talk, OpenAI-style errors, a port in use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli.main import DEFAULT_MODEL, main
from reference import reference_logits, reference_model

CONTEXT = 256


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "tiny-q0f32"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "q0f32", "--prefill-chunk", "16",
                 "--context-window", str(CONTEXT)]) == 0
    return out


@pytest.fixture(scope="module")
def server(package):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(package), "--port", "0", "--model-name", "tiny",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"at (http://127\.0\.0\.1:(\d+)/v1)", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    yield {"url": m.group(1), "port": int(m.group(2)), "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"], api_key="unused", max_retries=0, timeout=120)


def _chat(client, content, stream=False, **kw):
    messages = [{"role": "system", "content": "helpers"}, {"role": "user", "content": content}]
    if not stream:
        r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    pieces, finish, usage = [], None, None
    for ev in client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                             stream=True, stream_options={"include_usage": True}, **kw):
        if ev.choices:
            pieces.append(ev.choices[0].delta.content or "")
            finish = ev.choices[0].finish_reason or finish
        if ev.usage:
            usage = ev.usage
    return "".join(pieces), finish, usage


def test_models_and_a_chat_completion_equal_to_transformers(client, package):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    text, finish, usage = _chat(client, "def add(a, b):\n")
    assert finish == "length" and usage.completion_tokens == 12
    from runtime_stubs.chat import Chat
    from runtime_stubs.engine import Engine

    chat = Chat(Engine(package, num_threads=1))
    ids = chat.prompt_ids([{"role": "system", "content": "helpers"}, {"role": "user", "content": "def add(a, b):\n"}])
    assert usage.prompt_tokens == len(ids)
    hf = reference_model(DEFAULT_MODEL)
    seq = list(ids)
    for _ in range(12):  # transformers' greedy continuation, token by token
        seq.append(int(reference_logits(hf, seq)[-1].argmax()))
    assert text == chat.engine.decode_text(seq[len(ids):])


def test_streaming_equals_non_streaming(client):
    plain = _chat(client, "import os\n")
    streamed = _chat(client, "import os\n", stream=True)
    assert streamed[0] == plain[0] and streamed[1] == plain[1] == "length"
    assert streamed[2].completion_tokens == plain[2].completion_tokens == 12


def test_text_completions_stop_and_seed(client):
    r = client.completions.create(model="tiny", prompt="def main():\n", max_tokens=16, temperature=0)
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    stop = text.strip()[:2]
    s = client.completions.create(model="tiny", prompt="def main():\n", max_tokens=16, temperature=0, stop=[stop])
    assert s.choices[0].finish_reason == "stop" and stop not in s.choices[0].text and text.startswith(s.choices[0].text)
    streamed = "".join(ev.choices[0].text for ev in client.completions.create(
        model="tiny", prompt="def main():\n", max_tokens=16, temperature=0, stream=True))
    assert streamed == text
    sampled = [client.completions.create(model="tiny", prompt="class A:\n", max_tokens=10, temperature=1.0,
                                         top_p=0.9, seed=5).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_eight_concurrent_clients_get_their_own_answers(client):
    prompts = ["def add(a, b):\n", "import os\n", "class Stack:\n", "for i in range(10):\n", "try:\n",
               "with open(path) as f:\n", "def __init__(self):\n", "if __name__ == '__main__':\n"]
    alone = [_chat(client, p)[0] for p in prompts]
    assert len(set(alone)) > 4  # different prompts, different answers: cross-talk would show
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda ip: _chat(client, ip[1], stream=ip[0] % 2 == 1)[0], enumerate(prompts)))
    assert together == alone


def _post(server, path, data: bytes):
    req = urllib.request.Request(server["url"] + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("path, body, status, param", [
    ("/chat/completions", b"{not json", 400, None),
    ("/chat/completions", b'["a list"]', 400, None),
    ("/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
    ("/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": CONTEXT}).encode(), 400, "max_tokens"),
    ("/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x = 1\n" * 200}]}).encode(), 400, "messages"),
    ("/chat/completions", json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "messages"),
    ("/chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
    ("/completions", json.dumps({"prompt": "x", "temperature": 5}).encode(), 400, "temperature"),
    ("/completions", json.dumps({"prompt": [1, 99999]}).encode(), 400, "prompt"),
    ("/completions", json.dumps({"prompt": "x", "stop": 3}).encode(), 400, "stop"),
    ("/nowhere", b"{}", 404, None),
], ids=["malformed", "not-an-object", "unknown-model", "max-tokens-beyond-context", "prompt-beyond-context",
        "bad-role", "no-messages", "bad-temperature", "bad-token-id", "bad-stop", "unknown-path"])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, client, path, body, status, param):
    code, doc = _post(server, path, body)
    assert code == status, doc
    assert set(doc["error"]) >= {"message", "type", "param", "code"} and doc["error"]["param"] == param, doc
    assert _chat(client, "x = 1\n")[1] == "length"  # still serving


def test_port_in_use_is_one_line(server, package):
    res = subprocess.run([sys.executable, "-m", "cli", "serve", str(package), "--port", str(server["port"])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "cannot listen on 127.0.0.1" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_max_completion_tokens_and_the_completions_default(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "import os\n"}],
                                       temperature=0, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    c = client.completions.create(model="tiny", prompt="def main():\n", temperature=0)  # OpenAI's default: 16
    assert c.usage.completion_tokens == 16 or c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens <= 16
