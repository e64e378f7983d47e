"""One run's steps: ask the model, parse, approve, execute, observe — until an end.

:class:`StepRunner` is the body of ``Agent.astream``. It reads and extends the agent's
conversation, usage and step count, and ends by raising :class:`Finish` with the outcome, so the
agent has one place (``Agent._drive``) that turns every ending — an answer, a limit, a stop, an
error — into the run's single ``RunFinished`` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from nbagent.core.errors import ModelResponseError
from nbagent.core.events import (
    Approval,
    CellCleared,
    CellFinished,
    CellOutput,
    CodeProposed,
    CodeSkipped,
    Decision,
    Event,
    KernelStatus,
    ModelReplied,
    ModelRetry,
    Observation,
    PlanMade,
    RunStatus,
    StepStarted,
    TextDelta,
    Usage,
)
from nbagent.dialogue.observe import ANSWER_MIME, observe
from nbagent.dialogue.prompts import PLAN_CONTINUE, corrective, plan_request
from nbagent.llm.base import ChatParams, Completion, ImagePart, Message, StreamRestart, TextPart
from nbagent.loop.actions import assistant_message, read_reply, refusals, tools_for

if TYPE_CHECKING:
    from nbagent.dialogue.workfiles import WorkdirWatch
    from nbagent.kernel.session import KernelSession
    from nbagent.llm.base import ChatModel
    from nbagent.loop.options import AgentOptions
    from nbagent.tools.host import ToolHost

__all__ = ["Approver", "Decision", "Finish", "StepRunner", "find_answer"]


#: Awaited with (step, code) before a cell runs (``Decision`` is
#: :class:`nbagent.core.events.Decision`).
Approver = Callable[[int, str], Awaitable[Decision]]


class AgentState(Protocol):
    """What the steps read and extend of their agent. :class:`~nbagent.loop.agent.Agent` is the
    one implementation; a protocol, so that this module needs no import of it."""

    options: AgentOptions
    model: ChatModel
    messages: list[Message]
    steps: int
    usage: Usage
    vision: bool
    tool_host: ToolHost | None
    tool_names: frozenset[str]
    files: WorkdirWatch | None

    @property
    def approve(self) -> Approver | None: ...

    @property
    def kernel(self) -> KernelSession | None: ...


class Finish(Exception):
    """The run ends now with this outcome."""

    def __init__(self, status: RunStatus, reason: str, answer: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.answer = status, reason, answer


class StepRunner:
    """Runs the steps of one run of ``agent`` until something raises :class:`Finish`.

    ``emit`` delivers each event; ``kernel_ready`` is the task that starts the kernel (awaited
    only when the first code is about to run, so the start overlaps the first model reply).
    """

    def __init__(
        self,
        agent: AgentState,
        emit: Callable[[Event], None],
        *,
        kernel_start: asyncio.Future[None],
        deadline: float | None,
    ) -> None:
        self.agent = agent
        self.emit = emit
        self.kernel_start = kernel_start
        self.deadline = deadline
        #: What the model has not yet seen when the run ends on final_answer (for follow-ups).
        self.pending = ""
        #: The id of the run_python call the next observation answers (tools format).
        self._open_call: str | None = None
        #: The run began with "kernel starting" (the agent says so when the start is pending).
        self._start_pending = not kernel_start.done()

    async def run(self) -> None:
        try:
            await self._steps()
        finally:
            self._close_open_call()
            self._say_ready()

    def _say_ready(self) -> None:
        """Follow "kernel starting" with "ready" once the start has succeeded: when code is
        about to run, or when the run ends (the start may finish during a model call)."""
        start = self.kernel_start
        ended = self._start_pending and start.done() and not start.cancelled()
        if ended and start.exception() is None:
            self._start_pending = False
            self.emit(KernelStatus(status="ready"))

    async def _steps(self) -> None:
        agent = self.agent
        run_steps = 0
        correctives = 0
        while True:
            if run_steps >= agent.options.max_steps:
                raise Finish(
                    "limit",
                    f"reached the step limit ({agent.options.max_steps}) without a final answer",
                )
            self._check_deadline()
            run_steps += 1
            agent.steps += 1
            step = agent.steps
            self.emit(StepStarted(step=step))
            interval = agent.options.planning_interval
            if interval and (run_steps - 1) % interval == 0:
                await self._plan(step, first=run_steps == 1)
            completion = await self._ask_model(step)
            reading = read_reply(completion, agent.options.action, agent.tool_names)
            agent.messages.append(assistant_message(completion, agent.options.action))
            agent.messages.extend(refusals(reading.extra_calls))
            self._open_call = reading.call_id
            self._check_budget()
            cut_off = completion.finish_reason == "length"
            if cut_off or reading.problem or not (reading.has_code or completion.text.strip()):
                correctives += 1
                if correctives > 3:
                    raise Finish("failed", "the model kept sending replies that cannot be run")
                kind = "length" if cut_off else "empty"
                problem = reading.problem if not cut_off else ""
                self._tell(step, problem or corrective(kind, agent.options.action))
                continue
            correctives = 0
            if not reading.has_code:
                raise Finish("answered", "the model answered without code", completion.text.strip())
            code = await self._approved(step, reading.code)
            if code is None:
                continue
            original = reading.code if code != reading.code else ""
            self.emit(
                CodeProposed(step=step, code=code, reasoning=reading.reasoning, original=original)
            )
            cell = await self._execute(step, code)
            answer = find_answer(cell.outputs) if cell.status == "ok" else None
            if answer is not None:
                seen = observe(cell, vision=False, limit=1_000).text
                self.pending = f"{seen}\nYour final answer was given to the user: {answer}"
                raise Finish("answered", "final_answer() was called", answer)
            self._observe(cell, edited=bool(original))
            self._check_deadline()

    async def _plan(self, step: int, *, first: bool) -> None:
        """One model call, no code: a short plan (or an update), kept in the conversation."""
        agent = self.agent
        agent.messages.append(Message("user", plan_request(first)))
        completion = await self._ask_model(step, plan=True)
        text = completion.text.strip() or "(no plan given)"
        agent.messages.append(Message("assistant", text))
        agent.messages.append(Message("user", PLAN_CONTINUE))
        self.emit(PlanMade(step=step, text=text))
        self._check_budget()

    def _close_open_call(self) -> None:
        """Answer a run_python call left open when the run ends, so the conversation stays
        valid for a follow-up (the answer to final_answer goes there instead of ``pending``)."""
        if self._open_call is None:
            return
        text = self.pending or "Not run: the run ended before this code ran."
        self.agent.messages.append(Message("tool", text, tool_call_id=self._open_call))
        self._open_call = None
        self.pending = ""

    async def _approved(self, step: int, code: str) -> str | None:
        """The code to run after approval (None: skipped)."""
        approve = self.agent.approve
        if approve is None:
            return code
        self.emit(Approval(step=step, code=code))
        decision = await approve(step, code)
        self.emit(Approval(step=step, code=code, decision=decision))
        if decision.action == "quit":
            self.emit(CodeSkipped(step=step, code=code, reason=decision.reason or "quit"))
            raise Finish("stopped", decision.reason or "stopped at approval")
        if decision.action == "skip":
            reason = decision.reason or "the user skipped this code"
            self.emit(CodeSkipped(step=step, code=code, reason=reason))
            self._tell(step, f"The code was not run: {reason}. Do something else.")
            return None
        return decision.code or code

    def _tell(self, step: int, text: str) -> None:
        """An observation that is not about executed code (a correction, a skip)."""
        self.emit(Observation(step=step, text=text))
        self._answer_model(text)

    def _answer_model(self, content: str | tuple[TextPart | ImagePart, ...]) -> None:
        """The observation as the next message: a tool message answering the open call, or a
        user message."""
        if self._open_call is not None:
            message = Message("tool", content, tool_call_id=self._open_call)
            self._open_call = None
        else:
            message = Message("user", content)
        self.agent.messages.append(message)

    def _observe(self, cell: CellFinished, *, edited: bool = False) -> None:
        agent = self.agent
        workdir = agent.files.root if agent.files is not None else None
        parts = observe(
            cell, vision=agent.vision, limit=agent.options.observation_limit, workdir=workdir
        )
        text = parts.text
        changed = agent.files.changed() if agent.files is not None else ""
        if changed:
            text = f"{text}\n{changed}"
        if edited:  # the model must know what really ran, or it reasons about its own code
            ran = f"```python\n{cell.code}\n```"
            text = f"The user edited your code before it ran. What ran:\n{ran}\n{text}"
        self.emit(Observation(step=cell.step, text=text, images=len(parts.images)))
        content: str | tuple[TextPart | ImagePart, ...] = text
        if parts.images:
            images = (ImagePart(data=b64, media_type=media) for media, b64 in parts.images)
            content = (TextPart(text), *images)
        self._answer_model(content)

    async def _ask_model(self, step: int, *, plan: bool = False) -> Completion:
        """One model call; a plan call streams no text and reports no ``ModelReplied``."""
        agent = self.agent
        t0 = time.monotonic()
        tools = tools_for(agent.options.action)

        async def ask() -> Completion:
            completion: Completion | None = None
            async for item in agent.model.stream(agent.messages, ChatParams(tools=tools)):
                if isinstance(item, str):
                    if item and not plan:
                        self.emit(TextDelta(step=step, text=item))
                elif isinstance(item, StreamRestart):
                    self.emit(
                        ModelRetry(
                            step=step, reason=item.reason, attempt=item.attempt, delay=item.delay
                        )
                    )
                else:
                    completion = item
            if completion is None:
                raise ModelResponseError("the model stream ended without a reply")
            return completion

        try:
            completion = await asyncio.wait_for(ask(), self._remaining())
        except asyncio.TimeoutError:
            raise Finish("limit", self._deadline_reason()) from None
        usage = completion.usage
        if usage.total_tokens == 0:  # the server reported none: estimate, ~4 characters a token
            sent = sum(len(m.text) for m in agent.messages)
            usage = Usage(input_tokens=sent // 4, output_tokens=len(completion.text) // 4)
        usage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            requests=max(usage.requests, 1),
        )
        agent.usage = agent.usage + usage
        if plan:
            return completion
        self.emit(
            ModelReplied(
                step=step,
                text=completion.text,
                finish_reason=completion.finish_reason,
                usage=usage,
                total_usage=agent.usage,
                duration=time.monotonic() - t0,
            )
        )
        return completion

    async def _execute(self, step: int, code: str) -> CellFinished:
        if not self.kernel_start.done():
            await self.kernel_start
        self._say_ready()
        self.kernel_start.result()  # raises KernelStartupError if the start failed
        kernel = self.agent.kernel
        assert kernel is not None
        timeout = self.agent.options.step_timeout
        remaining = self._remaining()
        if remaining is not None:
            timeout = max(min(timeout, remaining), 0.1)

        def on_output(index: int, output: dict[str, Any] | None) -> None:
            if output is None:
                self.emit(CellCleared(step=step))
            else:
                self.emit(CellOutput(step=step, index=index, output=output))

        host = self.agent.tool_host
        handler = host.handler(step, self.emit) if host is not None else None
        result = await kernel.aexecute(
            code, timeout=timeout, on_output=on_output, stdin_handler=handler
        )
        if result.state_lost:
            self.emit(KernelStatus(status="restarted", detail=result.note))
        cell = CellFinished(
            step=step,
            code=code,
            status=result.status,
            execution_count=result.execution_count,
            duration=result.duration,
            outputs=tuple(result.outputs),
            note=result.note,
            state_lost=result.state_lost,
            new_names=tuple((result.extra.get("names") or {}).get("new") or ()),
            changed_names=tuple((result.extra.get("names") or {}).get("changed") or ()),
        )
        self.emit(cell)
        return cell

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.001)

    def _check_budget(self) -> None:
        budget, used = self.agent.options.token_budget, self.agent.usage.total_tokens
        if budget is not None and used >= budget:
            raise Finish("limit", f"token budget of {budget:,} reached ({used:,} tokens used)")

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Finish("limit", self._deadline_reason())

    def _deadline_reason(self) -> str:
        return f"wall-clock limit of {self.agent.options.time_limit:g} s reached"


def find_answer(outputs: Sequence[dict[str, Any]]) -> str | None:
    """The answer recorded by ``final_answer()`` in these outputs (the last one wins)."""
    for out in reversed(outputs):
        data = out.get("data") or {}
        if ANSWER_MIME in data:
            value = data[ANSWER_MIME]
            if isinstance(value, dict) and isinstance(value.get("answer"), str):
                return value["answer"]
    return None
