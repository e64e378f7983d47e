"""The answer is never lost: end-of-run listener failures, odd text, unclosed and closed agents,
a kernel that died between runs. A scripted model over real HTTP, a real kernel."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbagent.core.errors import ConfigError, ListenerWarning
from nbagent.core.events import Event, Notice, RunFinished
from nbagent.loop.agent import Agent
from nbagent.records.transcript import Transcript
from tests.kernel_fixtures import pid_gone, wait_until
from tests.llm_fixtures import Reply, ScriptedServer, scripted_model


def py(code: str, text: str = "Next.") -> str:
    return f"{text}\n```python\n{code}\n```"


def agent_for(server: ScriptedServer, tmp_path: Path, **kw: Any) -> Agent:
    kw.setdefault("workdir", tmp_path)
    return Agent(scripted_model(server), **kw)


def test_a_listener_failing_on_the_final_event_does_not_replace_the_answer(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    def broken(event: Event) -> None:
        if isinstance(event, RunFinished):
            raise OSError("disk on fire")

    scripted_openai.add(py("final_answer(6 * 7)"))
    agent = agent_for(scripted_openai, tmp_path, on_event=broken)
    with agent, pytest.warns(ListenerWarning, match="disk on fire"):
        result = agent.run("t")
    assert result.ok and result.answer == "42"
    assert isinstance(result.events[-1], RunFinished)
    notices = [e for e in result.events if isinstance(e, Notice)]
    assert notices and "disk on fire" in notices[-1].message


def test_a_transcript_that_cannot_be_written_keeps_the_answer(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    transcript = Transcript(tmp_path / "gone" / "run.ipynb")
    scripted_openai.add(py("final_answer('kept')"))
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.add_listener(transcript)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ListenerWarning)
            result = agent.run("t")
    assert result.answer == "kept" and isinstance(result.events[-1], RunFinished)
    assert transcript.save_error is not None
    path = transcript.save(tmp_path / "elsewhere.ipynb")  # the notebook is whole in memory
    assert nbformat.read(path, as_version=4).metadata["nbagent"]["answer"] == "kept"


def test_a_surrogate_pair_split_across_chunks_is_joined(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    # "\ud83d\ude00" is 😀 as a UTF-16 pair; chunk_size=1 sends each half in its own SSE
    # chunk, as servers that cut UTF-16 text do. A lone "\ud800" follows in the next reply.
    text = "Smile: \ud83d\ude00 done."
    scripted_openai.add(
        Reply(text=py("x = 1", text), chunk_size=1),
        Reply(text=py("final_answer('a\ud800b \ud83d\ude00')"), chunk_size=3),
    )
    transcript = Transcript(tmp_path / "run.ipynb")
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.add_listener(transcript)
        result = agent.run("t")
    assert result.ok, result.reason
    assert result.answer == "a\ufffdb 😀"
    sent = scripted_openai.chat_requests[1].messages
    assert any(m["role"] == "assistant" and "Smile: 😀 done." in m["content"] for m in sent)
    nb = nbformat.read(tmp_path / "run.ipynb", as_version=4)
    assert "Smile: 😀 done." in json.dumps(nb.cells[2].source, ensure_ascii=False)


def test_non_utf8_task_text_is_made_safe(scripted_openai: ScriptedServer, tmp_path: Path) -> None:
    scripted_openai.add("The answer is here.")
    transcript = Transcript(tmp_path / "run.ipynb")
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.add_listener(transcript)
        result = agent.run("caf\udce9 \udcff")  # how Python decodes b"caf\xe9 \xff" in argv
    assert result.ok
    first = scripted_openai.chat_requests[0].messages[1]["content"]
    assert "caf\ufffd \ufffd" in first
    nbformat.read(tmp_path / "run.ipynb", as_version=4)


def test_an_unclosed_agent_shuts_its_kernel_down_when_collected(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("import os\nprint(os.getpid())"), "done")
    agent = agent_for(scripted_openai, tmp_path)
    result = agent.run("t")
    assert result.ok
    assert agent.kernel is not None
    pid = agent.kernel.pid
    assert pid is not None and not pid_gone(pid)
    with pytest.warns(ResourceWarning, match="unclosed nbagent Agent"):
        del agent, result
        gc.collect()
    assert wait_until(lambda: pid_gone(pid), 15), "the collected agent's kernel kept running"


def test_an_unclosed_agent_whose_loop_is_gone_is_ended_by_signals(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add("done")
    agent = agent_for(scripted_openai, tmp_path)

    async def go(a: Agent) -> None:
        await a.astart()
        await a.arun("t")

    asyncio.run(go(agent))  # the loop that owned the kernel's sockets is closed now
    pid = agent.kernel.pid if agent.kernel is not None else None
    assert pid is not None and not pid_gone(pid)
    with pytest.warns(ResourceWarning, match="unclosed nbagent Agent"):
        del agent
        gc.collect()
    assert wait_until(lambda: pid_gone(pid), 15), "the collected agent's kernel kept running"


def test_run_on_a_closed_agent_fails_before_any_request(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add("first", "second")
    agent = agent_for(scripted_openai, tmp_path)
    with agent:
        agent.run("t")
    with pytest.raises(ConfigError, match="closed"):
        agent.run("again")
    assert len(scripted_openai.chat_requests) == 1


def test_a_follow_up_after_the_kernel_died_says_the_state_was_lost(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(py("x = 42"), "set", "ok")
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.run("set x")
        assert agent.kernel is not None and agent.kernel.pid is not None
        os.kill(agent.kernel.pid, signal.SIGKILL)
        assert wait_until(lambda: not agent.kernel.is_alive, 10)  # type: ignore[union-attr]
        agent.run("print x")
    follow_up = scripted_openai.chat_requests[2].messages[-1]["content"]
    assert "kernel died since the last run" in follow_up and "SIGKILL" in follow_up
    assert "earlier variables still defined" not in follow_up


def test_kernel_text_with_surrogates_reaches_the_model_and_the_notebook_as_utf8(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    code = "import sys\nprint('lone \\ud800 pair \\ud83d\\ude00')\nsys.stderr.write('\\udcff\\n')"
    scripted_openai.add(py(code), "seen")
    transcript = Transcript(tmp_path / "run.ipynb")
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.add_listener(transcript)
        result = agent.run("t")
    assert result.ok
    observation = scripted_openai.chat_requests[1].messages[-1]["content"]
    assert "lone \ufffd pair" in observation
    nbformat.read(tmp_path / "run.ipynb", as_version=4)


def test_surrogate_escapes_in_kernel_messages_are_made_safe() -> None:
    from nbagent.kernel.gateway._wire import decode_frame
    from nbagent.kernel.local import _loads

    assert _loads(b'{"t": "a \\ud800 b \\ud83d\\ude00"}') == {"t": "a \ufffd b 😀"}
    frame = '{"header": {"msg_type": "stream"}, "content": {"text": "\\udcff"}}'
    msg = decode_frame(frame)
    assert msg is not None and msg["content"]["text"] == "\ufffd"


def test_long_replies_and_answers_are_stored_once_in_full(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    reply = "R" * 300_000
    scripted_openai.add(
        Reply(text=py("x = 'A' * 3_000_000", reply), chunk_size=50_000),
        py("final_answer(x)"),
    )
    transcript = Transcript(tmp_path / "run.ipynb")
    with agent_for(scripted_openai, tmp_path) as agent:
        agent.add_listener(transcript)
        result = agent.run("t")
    assert result.answer == "A" * 3_000_000
    raw = (tmp_path / "run.ipynb").read_text()
    nb = nbformat.reads(raw, as_version=4)
    meta = nb.metadata["nbagent"]
    assert meta["answer"] == result.answer  # the whole answer, once
    assert len(meta["runs"][-1]["answer"]) < 2_000
    step = next(c for c in nb.cells if c.metadata["nbagent"].get("role") == "step")
    assert reply in step.metadata["nbagent"]["reply"]  # the whole reply, once (resume needs it)
    assert raw.count("R" * 100_000) == 3 + 1  # 300k in metadata (3 blocks) + 100k on display
    assert len(raw) < 3_000_000 + 1_500_000 + 600_000  # answer + bounded output + reply


def test_a_thread_of_an_earlier_step_neither_speaks_for_nor_ends_a_later_step(
    scripted_openai: ScriptedServer, tmp_path: Path
) -> None:
    scripted_openai.add(
        py(
            "import threading, time\n"
            "def late():\n    time.sleep(0.5)\n    print('late line')\n"
            "threading.Thread(target=late).start()\n"
            "threading.Timer(0.7, lambda: final_answer('from a timer')).start()"
        ),
        py("time.sleep(1.5)\nprint('step two')"),
        py("final_answer('the real answer')"),
    )
    with agent_for(scripted_openai, tmp_path) as agent:
        result = agent.run("t")
    assert result.answer == "the real answer" and result.steps == 3
    second = scripted_openai.chat_requests[2].messages[-1]["content"]
    assert "[thread of an earlier cell] late line" in second
    assert "ignored, not this step's code" in second and "step two" in second


def test_transcript_save_never_raises_a_unicode_error(tmp_path: Path) -> None:
    transcript = Transcript()
    transcript.nb.cells.append(nbformat.v4.new_markdown_cell("lone \ud800 and \ud83d\ude00"))
    path = transcript.save(tmp_path / "odd.ipynb")
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.source == "lone \ufffd and 😀"
