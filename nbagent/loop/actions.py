"""How a reply carries its action: fenced code in the text, or a native ``run_python`` call.

Two action formats, one loop (``steps.py``):

* ``"code"`` (default): the code is the reply's ```` ```python ```` blocks (``parsing.py``); the
  observation goes back as a user message.
* ``"tools"``: for models trained on function calling. The model is offered one function,
  ``run_python(code: str)``; the code arrives as that call's arguments (the client assembles the
  streamed tool-call deltas into ``Completion.tool_calls``), the assistant message keeps the
  call, and the observation goes back as a ``tool`` message answering the call's id (images as
  the provider allows: inside the ``tool_result`` for Anthropic, in a user message right after
  for OpenAI). A reply with no call ends the run with its text.

**One call per reply.** Only the first call of a reply runs, as that step's cell; every other
call is answered with a short refusal ("not run: one run_python call per reply") so the
conversation stays valid for both providers (every call id gets its answer) and one step stays
one cell in the events, the panel and the transcript.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from nbagent.core.text import shorten
from nbagent.dialogue.parsing import parse_reply
from nbagent.llm.base import Completion, Message, ToolCall, ToolSpec

__all__ = [
    "ACTIONS",
    "RUN_PYTHON",
    "Action",
    "Reading",
    "assistant_message",
    "read_reply",
    "refusals",
    "tools_for",
]

Action = Literal["code", "tools"]
ACTIONS: tuple[Action, ...] = ("code", "tools")

RUN_PYTHON = ToolSpec(
    name="run_python",
    description=(
        "Run Python code in the live IPython kernel. Returns what it printed, the value of its "
        "last expression, errors and plots. State persists between calls."
    ),
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to run"}},
        "required": ["code"],
    },
)

_ONE_CALL = (
    "Not run: only the first run_python call of a reply runs. Send one call per reply; "
    "repeat this one in your next reply if you still need it."
)


@dataclass(frozen=True)
class Reading:
    """What one reply asks for.

    ``code`` is what to run ("" for none); ``reasoning`` the text around it; ``call_id`` the
    call the observation answers (tools format); ``extra_calls`` the calls that will not run;
    ``problem`` a correction for the model when the call cannot run as sent.
    """

    code: str
    reasoning: str
    call_id: str | None = None
    extra_calls: tuple[ToolCall, ...] = ()
    problem: str = ""

    @property
    def has_code(self) -> bool:
        return bool(self.code.strip())


def tools_for(action: Action) -> tuple[ToolSpec, ...]:
    """The functions offered to the model with every request."""
    return (RUN_PYTHON,) if action == "tools" else ()


def assistant_message(completion: Completion, action: Action) -> Message:
    """The reply as it joins the conversation (with its calls, in the tools format)."""
    if action == "tools" and completion.tool_calls:
        return Message("assistant", completion.text, tool_calls=completion.tool_calls)
    return Message("assistant", completion.text)


def read_reply(completion: Completion, action: Action, host_tools: Collection[str] = ()) -> Reading:
    """Split a reply into the code to run and the rest."""
    if action == "code":
        parsed = parse_reply(completion.text)
        return Reading(code=parsed.code, reasoning=parsed.reasoning)
    text = completion.text.strip()
    if not completion.tool_calls:
        return Reading(code="", reasoning=text)
    first, *rest = completion.tool_calls
    reading = Reading(code="", reasoning=text, call_id=first.id, extra_calls=tuple(rest))
    if first.name != RUN_PYTHON.name:
        hint = (
            f" {first.name}() is a Python function in the kernel: call it from code you run."
            if first.name in host_tools
            else ""
        )
        return _with_problem(
            reading, f"There is no function {first.name!r}; the only one is run_python.{hint}"
        )
    code = _code_of(first.arguments)
    if code is None:
        return _with_problem(
            reading,
            'run_python needs JSON arguments {"code": "<python source>"}; got '
            f"{shorten(first.arguments, 80)!r}. Nothing ran.",
        )
    if not code.strip():
        return _with_problem(reading, "run_python got empty code. Nothing ran.")
    return Reading(code=code, reasoning=text, call_id=first.id, extra_calls=tuple(rest))


def refusals(calls: tuple[ToolCall, ...]) -> list[Message]:
    """Tool messages answering the calls of a reply that will not run."""
    return [Message("tool", _ONE_CALL, tool_call_id=c.id) for c in calls]


def _with_problem(reading: Reading, problem: str) -> Reading:
    return Reading(
        code="",
        reasoning=reading.reasoning,
        call_id=reading.call_id,
        extra_calls=reading.extra_calls,
        problem=problem,
    )


def _code_of(arguments: str) -> str | None:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("code")
    if not isinstance(value, str):
        return None
    if value.lstrip().startswith(("```", "~~~")):  # some models fence the code anyway
        fenced = parse_reply(value)
        if fenced.has_code:
            return fenced.code
    return value
