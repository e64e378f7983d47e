"""The scripted server itself: what later tests rely on (recording, streaming, the CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nbagent.core.errors import ModelHTTPError
from nbagent.llm import Message, complete
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model

ROOT = Path(__file__).resolve().parent.parent
HI = [Message("user", "hi")]


def test_records_every_request(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("one")
    before = time.time()
    with httpx.Client() as client:
        r = client.post(scripted_openai.root_url + "/v1/wrong", json={"x": 1})
        assert r.status_code == 404 and "no route POST /v1/wrong" in r.text
        r = client.post(
            scripted_openai.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Probe": "1"},
        )
    assert r.status_code == 200
    wrong, chat = scripted_openai.requests
    assert (wrong.method, wrong.path, wrong.json) == ("POST", "/v1/wrong", {"x": 1})
    assert chat.headers["x-probe"] == "1"
    assert chat.model == "m" and chat.messages == [{"role": "user", "content": "hi"}]
    assert before <= wrong.time <= chat.time <= time.time()
    assert scripted_openai.chat_requests == [chat]
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "m" and isinstance(body["created"], int)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "one"}


def test_an_empty_queue_answers_500_clearly(scripted_openai: ScriptedServer) -> None:
    with httpx.Client() as client:
        r = client.post(scripted_openai.base_url + "/chat/completions", json={"model": "m"})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "scripted server: no reply left"


@pytest.mark.anyio
async def test_an_empty_queue_shows_in_the_client_error(scripted_anthropic: ScriptedServer) -> None:
    model = scripted_model(scripted_anthropic)
    with pytest.raises(ModelHTTPError, match="scripted server: no reply left"):
        await complete(model, HI)
    await model.aclose()


@pytest.mark.anyio
async def test_responder_and_default() -> None:
    def responder(body: dict) -> str:
        return f"you said {body['messages'][-1]['content']}"

    with ScriptedServer(["scripted first"], responder=responder) as server:
        model = scripted_model(server)
        assert (await complete(model, HI)).text == "scripted first"
        assert (await complete(model, [Message("user", "x")])).text == "you said x"
        await model.aclose()
    with ScriptedServer(default=Reply("always")) as server:
        model = scripted_model(server)
        assert [(await complete(model, HI)).text for _ in range(2)] == ["always", "always"]
        await model.aclose()


def test_models_endpoint(scripted_openai: ScriptedServer) -> None:
    r = httpx.get(scripted_openai.base_url + "/models")
    assert r.json()["data"][0]["id"] == "scripted"


def test_streams_in_real_chunks(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add(Reply("abcdefgh" * 4, chunk_size=8, chunk_delay=0.3))
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", scripted_openai.base_url + "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        start = time.monotonic()
        first = json.loads(next(lines)[len("data: ") :])
        assert time.monotonic() - start < 0.9  # well before the last of 4 chunks 0.3 s apart
        rest = [line for line in lines if line]
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert rest[-1] == "data: [DONE]"
    usage = json.loads(rest[-2][len("data: ") :])
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 0
    }


def test_reply_from_a_dict_checks_its_fields() -> None:
    assert Reply.from_obj({"text": "x", "usage": [1, 2]}).usage == (1, 2)
    with pytest.raises(ValueError, match="unknown Reply fields"):
        Reply.from_obj({"txt": "x"})


def test_env_points_a_subprocess_at_the_server(scripted_openai: ScriptedServer) -> None:
    scripted_openai.add("from another process")
    code = (
        "from nbagent.core.sync import run_sync\n"
        "from nbagent.llm import make_model, complete, Message\n"
        "print(run_sync(complete(make_model(), [Message('user', 'hi')])).text)\n"
    )
    env = {**os.environ, **scripted_openai.env(), "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "from another process"


def test_command_line_entry_point(tmp_path: Path) -> None:
    script = tmp_path / "replies.json"
    script.write_text(json.dumps(["first", {"status": 429, "headers": {"retry-after": "0"}}]))
    log = tmp_path / "requests.jsonl"
    cmd = [sys.executable, "-m", "tests.scripted_server", "--port", "0", "--script", str(script)]
    cmd += ["--default", "fallback", "--log", str(log)]
    with subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("listening at http://127.0.0.1:"), line
            url = line.split()[-1] + "/chat/completions"
            with httpx.Client() as client:
                answers = [client.post(url, json={"model": "m", "messages": []}) for _ in range(3)]
            assert [r.status_code for r in answers] == [200, 429, 200]
            assert answers[0].json()["choices"][0]["message"]["content"] == "first"
            assert answers[2].json()["choices"][0]["message"]["content"] == "fallback"
            logged = [json.loads(x) for x in log.read_text().splitlines()]
            assert [entry["path"] for entry in logged] == ["/v1/chat/completions"] * 3
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
