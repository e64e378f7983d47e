"""Reading a transcript back: the conversation to restore and the code that rebuilds state.

``nbagent run --resume run.ipynb "follow-up"`` (and ``Agent.aresume``) continue a saved run:
the transcript's cells carry, in ``metadata.nbagent``, the exact user message that started each
run (``prompt``), every raw model reply (``reply``) and every observation the model read
(``observation``). From those this module rebuilds the message list as the model saw it, and
lists the code cells to re-execute — in order, leaving out cells that timed out, killed the
kernel or were skipped, exactly those a plain re-run skips too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nbformat

from nbagent.core.errors import TranscriptError
from nbagent.core.events import Event, Notice, Usage
from nbagent.dialogue.prompts import task_message
from nbagent.llm.base import Message

if TYPE_CHECKING:
    from nbagent.kernel.session import KernelSession
    from nbagent.records.transcript import Transcript

__all__ = ["Restored", "restore_conversation"]


@dataclass
class Restored:
    """What a transcript gives back to an agent that resumes it."""

    messages: list[Message]
    code: list[str] = field(default_factory=list)
    steps: int = 0
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    #: Said to the model before the follow-up task (how the last run ended).
    pending: str = ""


def restore_conversation(nb: nbformat.NotebookNode, system: str) -> Restored:
    """Rebuild the conversation of an nbagent transcript, under the given system prompt."""
    meta = nb.metadata.get("nbagent")
    if not isinstance(meta, dict):
        raise TranscriptError("this notebook is not an nbagent transcript (no metadata.nbagent)")
    runs = meta.get("runs") or []
    restored = Restored(messages=[Message("system", system)])
    messages = restored.messages
    for cell in nb.cells:
        info: dict[str, Any] = cell.metadata.get("nbagent") or {}
        role = info.get("role")
        if role == "task":
            restored.turns += 1
            prompt = info.get("prompt") or _task_prompt(runs, restored.turns)
            if messages[-1].role == "user":
                messages.pop()  # folded into the follow-up's message, as the agent does
            messages.append(Message("user", prompt))
        elif role == "inputs":
            restored.code.append(cell.source)  # values given with push / -i, recreated
        elif role in ("step", "reply", "answer"):
            if isinstance(info.get("step"), int):
                restored.steps = max(restored.steps, info["step"])
            reply = str(info.get("reply") or "")
            if role == "step" and cell.source.strip() and cell.source.strip() not in reply:
                # The tool-call format: the code travelled as a run_python call, not in the text.
                reply = f"{reply}\n```python\n{cell.source.strip()}\n```".lstrip("\n")
            if reply:
                messages.append(Message("assistant", reply))
            if role == "step" and not _skipped(cell):
                restored.code.append(cell.source)
            if info.get("observation"):
                messages.append(Message("user", str(info["observation"])))
    if restored.turns == 0:
        raise TranscriptError("the transcript has no task cell to resume from")
    if messages[-1].role == "assistant" and meta.get("answer") is not None:
        restored.pending = f"Your final answer was given to the user: {meta['answer']}"
    usage = meta.get("usage") or {}
    restored.usage = Usage(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        cached_tokens=int(usage.get("cached_tokens", 0)),
        requests=int(usage.get("requests", 0)),
    )
    return restored


def _task_prompt(runs: list[Any], turn: int) -> str:
    if turn - 1 < len(runs) and isinstance(runs[turn - 1], dict):
        return task_message(str(runs[turn - 1].get("task", "")))
    raise TranscriptError(f"the transcript lost the task of run {turn}")


def _skipped(cell: Any) -> bool:
    return "skip-execution" in cell.metadata.get("tags", [])


async def rerun(
    kernel: KernelSession,
    transcript: Transcript,
    code: Sequence[str],
    *,
    timeout: float | None,
    prelude: str | None,
    notify: Callable[[Event], object],
) -> None:
    """Rebuild kernel state for ``Agent.aresume``: run the restored ``code`` in ``kernel``.

    Host tools are not called again: their recorded results are replayed, as in a plain
    re-execution of the transcript; the live stubs (``prelude``) come back afterwards. A step that
    times out or kills the kernel is reported through ``notify`` and the rest still run.
    """
    replay = transcript.tool_replay_source()
    for cell in [replay, *code] if replay else code:
        result = await kernel.aexecute(cell, timeout=timeout)
        if result.status in ("timeout", "died"):
            notify(Notice(level="warning", message=f"while restoring state: {result.note}"))
    if replay and prelude is not None:
        await kernel.aexecute(prelude, timeout=timeout)
