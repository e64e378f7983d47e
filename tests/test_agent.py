"""The agent loop end to end: a scripted model over real HTTP, a real kernel."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from nbagent.core.errors import AuthenticationError, ConfigError
from nbagent.core.events import (
    CellFinished,
    CellOutput,
    KernelStatus,
    ModelRetry,
    Notice,
    Observation,
    RunFinished,
    TextDelta,
)
from nbagent.loop.agent import Agent
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


def agent_for(server: ScriptedServer, tmp_path: Path, **kw: Any) -> Agent:
    kw.setdefault("workdir", tmp_path)
    return Agent(scripted_model(server), **kw)


def user_texts(server: ScriptedServer, request: int) -> list[str]:
    msgs = server.chat_requests[request].messages
    out = []
    for m in msgs:
        if m["role"] != "user":
            continue
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        out.append(content)
    return out


def test_state_persists_across_steps_and_final_answer_ends(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("x = 21\nprint('x is', x)"), py("final_answer(x * 2)"))
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("Double 21.")
    assert result.ok and result.answer == "42" and result.steps == 2
    second = user_texts(scripted_openai, 1)
    task, files = second[0].split("\n\n")
    assert task == "Task: Double 21."
    assert files == f"Files in the working directory ({tmp_path}): none (it is empty)."
    assert "<output>\nx is 21\n</output>" in second[-1]
    kinds = [type(e).__name__ for e in result.events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert "TextDelta" in kinds and "CellOutput" in kinds and "CellFinished" in kinds


def test_error_is_observed_and_recovered(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("print(undefined_name)"), py("undefined_name = 3\nfinal_answer(3)"))
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "3"
    obs = user_texts(scripted_openai, 1)[-1]
    assert "NameError: name 'undefined_name' is not defined" in obs
    assert "\x1b[" not in obs
    cells = [e for e in result.events if isinstance(e, CellFinished)]
    assert [c.status for c in cells] == ["error", "ok"]


def test_timeout_interrupts_and_keeps_state(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py("kept = 'yes'\nprint('before', flush=True)\nwhile True: pass"),
        py("final_answer(kept)"),
    )
    with agent_for(scripted_openai, tmp_path, step_timeout=1.5) as agent:
        result = agent.run("t")
    assert result.answer == "yes"
    obs = user_texts(scripted_openai, 1)[-1]
    assert "timed out after 1.5 s" in obs and "state kept" in obs
    assert "before" in obs


def test_kernel_death_is_reported_and_the_kernel_restarts(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py("lost = 1\nimport os\nos._exit(1)"),
        py("print('alive', 'lost' in globals())\nfinal_answer('ok')"),
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "ok"
    obs = user_texts(scripted_openai, 1)[-1]
    assert "died" in obs and "state lost" in obs
    assert any(isinstance(e, KernelStatus) and e.status == "restarted" for e in result.events)
    last = [e for e in result.events if isinstance(e, CellFinished)][-1]
    assert "alive False" in last.outputs[0]["text"]


def test_input_fails_at_once(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("name = input('Name? ')"), "I cannot ask; stopping.")
    with agent_for(scripted_openai, tmp_path, step_timeout=20) as agent:
        result = agent.run("t")
    obs = user_texts(scripted_openai, 1)[-1]
    assert "input() and getpass() are not available" in obs
    cell = next(e for e in result.events if isinstance(e, CellFinished))
    assert cell.duration < 10


def test_reply_without_code_is_the_answer(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add('The answer is 7.\n```json\n{"a": 1}\n```')
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.ok and result.answer.startswith("The answer is 7.")
    assert not any(isinstance(e, CellFinished) for e in result.events)


def test_step_limit_stops_with_a_reason(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(*[py(f"print({i})") for i in range(3)])
    with agent_for(scripted_openai, tmp_path, max_steps=2) as agent:
        result = agent.run("t")
    assert result.status == "limit" and result.answer is None
    assert "step limit (2)" in result.reason
    assert len(scripted_openai.chat_requests) == 2


def test_error_after_final_answer_goes_back_to_the_model(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("final_answer(1)\n1/0"), py("final_answer(2)"))
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "2"
    assert "ZeroDivisionError" in user_texts(scripted_openai, 1)[-1]


def test_truncated_reply_never_runs(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(
        Reply(text="```python\nopen('ran.txt', 'w').write('x')\nprint(", finish_reason="length"),
        py("final_answer('done')"),
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "done"
    assert not (tmp_path / "ran.txt").exists()
    assert "cut off by the output token limit" in user_texts(scripted_openai, 1)[-1]


def test_follow_up_continues_conversation_and_kernel(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py("data = [1, 2, 3]\nfinal_answer(len(data))"), py("final_answer(sum(data))")
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        first = agent.run("Count.")
        second = agent.run("Now sum.")
    assert (first.answer, second.answer) == ("3", "6")
    msgs = scripted_openai.chat_requests[1].messages
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "Your final answer was given to the user: 3" in msgs[-1]["content"]
    assert "New task" in msgs[-1]["content"] and "Now sum." in msgs[-1]["content"]
    assert msgs[:3] == [*scripted_openai.chat_requests[0].messages, msgs[2]]


def test_wall_clock_limit(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("import time\ntime.sleep(30)"), py("final_answer(1)"))
    with agent_for(scripted_openai, tmp_path, time_limit=2.0) as agent:
        result = agent.run("t")
    assert result.status == "limit" and "wall-clock limit of 2 s" in result.reason
    assert result.duration < 10


def test_token_budget(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(Reply(text=py("x = 1"), usage=(900, 200)), py("final_answer(x)"))
    with agent_for(scripted_openai, tmp_path, token_budget=1000) as agent:
        result = agent.run("t")
    assert result.status == "limit" and "token budget of 1,000" in result.reason
    assert len(scripted_openai.chat_requests) == 1


def test_model_retry_is_an_event(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(Reply(status=500, text="boom"), "All done.")
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "All done."
    assert any(isinstance(e, ModelRetry) for e in result.events)


def test_bad_key_fails_clearly(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(Reply(status=401, text="Incorrect API key provided"))
    events: list[Any] = []
    agent = Agent(
        scripted_model(scripted_openai, api_key="sk-bad-123456789"),
        workdir=tmp_path,
        on_event=events.append,
    )
    with agent, pytest.raises(AuthenticationError) as info:
        agent.run("t")
    assert "401" in str(info.value) and "sk-bad-123456789" not in str(info.value)
    end = events[-1]
    assert isinstance(end, RunFinished) and end.status == "failed"
    assert end.error_type == "AuthenticationError"


def test_secrets_never_reach_the_kernel_or_the_model(
    scripted_openai: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-SECRET-0123456789")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-SECRET-abcdef")
    monkeypatch.setenv("HARMLESS_SETTING", "visible-value")
    scripted_openai.add(
        py("import os, json\nprint(json.dumps(dict(os.environ)))"),
        py("final_answer('checked')"),
    )
    agent = Agent(
        scripted_model(scripted_openai, api_key="sk-live-SECRET-0123456789"), workdir=tmp_path
    )
    with agent:
        result = agent.run("show the environment")
    assert result.ok
    env_seen = json.loads(
        next(e for e in result.events if isinstance(e, CellFinished)).outputs[0]["text"]
    )
    assert env_seen.get("HARMLESS_SETTING") == "visible-value"
    assert "OPENAI_API_KEY" not in env_seen and "MY_SERVICE_TOKEN" not in env_seen
    for request in scripted_openai.chat_requests:
        assert b"SECRET" not in request.body
    assert all("SECRET" not in repr(e) for e in result.events)


def test_env_passes_a_named_variable(
    scripted_openai: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    scripted_openai.add(py("import os\nfinal_answer(os.environ.get('DB_PASSWORD'))"))
    with agent_for(scripted_openai, tmp_path, env=["DB_PASSWORD"]) as agent:
        assert agent.run("t").answer == "hunter2"


def test_dataframe_observation_is_a_summary(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    pytest.importorskip("pandas")
    scripted_openai.add(
        py("import pandas as pd\ndf = pd.DataFrame({'a': range(5000), 'b': 'x'})\ndf"),
        py("final_answer(df.shape)"),
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "(5000, 2)"
    obs = user_texts(scripted_openai, 1)[-1]
    assert "DataFrame: 5,000 rows x 2 columns" in obs and "a (int64)" in obs
    assert "<table" not in obs


def test_huge_print_costs_the_next_request_at_most_6000_chars(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py("for i in range(100_000): print('line', i)"),
        py("print(len(_printed[1].splitlines()))\nfinal_answer('ok')"),
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    first, second = scripted_openai.chat_requests[:2]
    growth = len(json.dumps(second.messages)) - len(json.dumps(first.messages))
    assert growth <= 6_000 + len(json.dumps(second.messages[-2]))
    obs = user_texts(scripted_openai, 1)[-1]
    assert len(obs) <= 6_000 and "line 99999" in obs and "_printed[1]" in obs
    last = [e for e in result.events if isinstance(e, CellFinished)][-1]
    assert last.outputs[0]["text"].startswith("100000")


def test_listener_failure_becomes_a_notice(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    def broken(event: Any) -> None:
        if isinstance(event, Observation):
            raise RuntimeError("listener bug")

    scripted_openai.add(py("print(1)"), "done")
    with agent_for(scripted_openai, tmp_path, on_event=broken) as agent:
        result = agent.run("t")
    assert result.ok
    notices = [e for e in result.events if isinstance(e, Notice)]
    assert notices and "listener bug" in notices[0].message


def test_live_events_stream_before_the_end(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(
        py("import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)"),
        "done",
    )
    seen: list[tuple[str, float]] = []
    with agent_for(scripted_openai, tmp_path) as agent:
        for event in agent.stream("t"):
            seen.append((type(event).__name__, event.time))
    outputs = [t for name, t in seen if name == "CellOutput"]
    finished = next(t for name, t in seen if name == "CellFinished")
    assert len(outputs) >= 2 and finished - outputs[0] > 0.3
    assert seen[-1][0] == "RunFinished"
    assert any(name == "TextDelta" for name, _ in seen)


def test_no_model_configured_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NBAGENT_MODEL", "NBAGENT_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="NBAGENT_MODEL"):
        Agent()


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        Agent("openai:x", base_url="http://127.0.0.1:9", max_steps=0)
    with pytest.raises(ConfigError, match="not a directory"):
        Agent("openai:x", base_url="http://127.0.0.1:9", workdir=tmp_path / "nope")


@pytest.mark.anyio
async def test_eight_agents_at_once_have_isolated_state(tmp_path: Path) -> None:
    servers = [ScriptedServer().start() for _ in range(8)]
    try:
        for i, server in enumerate(servers):
            server.add(py(f"secret = {i}"), py("final_answer(secret)"))

        async def one(i: int) -> str | None:
            async with Agent(scripted_model(servers[i]), workdir=tmp_path) as agent:
                return (await agent.arun(f"agent {i}")).answer

        answers = await asyncio.gather(*(one(i) for i in range(8)))
    finally:
        for server in servers:
            server.stop()
    assert answers == [str(i) for i in range(8)]


def test_cell_outputs_are_nbformat_dicts(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(py("print('a')\n40 + 2"), "done")
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    outs = [e.output for e in result.events if isinstance(e, CellOutput)]
    assert {"output_type": "stream", "name": "stdout", "text": "a\n"} in outs
    assert any(
        o["output_type"] == "execute_result" and o["data"]["text/plain"] == "42" for o in outs
    )
    assert os.environ.get("NBAGENT_TEST_NEVER_SET") is None
    assert any(isinstance(e, TextDelta) for e in result.events)


def test_push_and_pull_in_the_blocking_api(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add(
        py("flagged = [v for v in values if v > threshold]\nfinal_answer(len(flagged))")
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.push({"threshold": 0.5, "values": [0.1, 0.7, 0.9]})
        result = agent.run("Flag values above threshold; keep them in `flagged`.")
        pulled = agent.pull(["flagged"])
    assert result.answer == "2" and pulled == {"flagged": [0.7, 0.9]}
