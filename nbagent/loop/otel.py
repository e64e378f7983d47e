"""Agent runs as OpenTelemetry spans, following the GenAI semantic conventions.

:class:`RunTracer` is an event-stream listener (the same events the panel and the transcript
read), so tracing needs no hook inside the loop: spans are built from the events' times and
durations. One run gives::

    invoke_agent nbagent                       (gen_ai.operation.name = invoke_agent)
    ├── chat <model>                           (one per model call: gen_ai.usage.*_tokens)
    ├── execute_tool run_python                (one per code cell the agent runs)
    │   └── execute_tool <tool>                (one per host or MCP tool call from that code)
    └── ...

The run span is a child of the caller's current span. While the run, a model call or a cell
is under way its span is also made *current* in the run's task (the listener is called there),
so spans other libraries start meanwhile nest under it: the MCP SDK's ``MCP send tools/call``
(which also carries the trace to the server), or an instrumented HTTP client's. Failures set
the span status to ERROR with ``error.type``.

The task, the model's replies, the code, its outputs and tool arguments and results are
recorded only when content capture is on (``capture_content=True``, or the GenAI
convention's ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``), since they may hold
data the tracing backend should not. Only this module imports OpenTelemetry
(:mod:`nbagent.loop.telemetry` decides whether to load it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from nbagent.core import events as ev
from nbagent.core.version import __version__

__all__ = ["RunTracer", "configured", "current_context"]

#: Longest text kept in an opt-in content attribute.
CONTENT_LIMIT = 8_000
_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def current_context() -> Any:
    """The current OpenTelemetry context."""
    return otel_context.get_current()


def configured() -> bool:
    """True when a tracer provider has been set (the API's default records nothing; the MCP
    SDK imports OpenTelemetry whether or not anyone traces)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _clip(text: str) -> str:
    return text if len(text) <= CONTENT_LIMIT else text[: CONTENT_LIMIT - 1] + "…"


def _json(value: Any) -> str:
    try:
        return _clip(json.dumps(value, ensure_ascii=False, default=repr))
    except (TypeError, ValueError):
        return _clip(repr(value))


class RunTracer:
    """Listener: the events of one run as spans (see the module doc).

    Args:
        parent: The context to nest the run under (default: the current one when the run
            starts).
        capture_content: Record task, replies, code, outputs and tool values (default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` environment variable).
        tracer_provider: Where spans go (default: the global provider).
    """

    def __init__(
        self,
        *,
        parent: Any = None,
        capture_content: bool | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.tracer = trace.get_tracer("nbagent", __version__, tracer_provider=tracer_provider)
        self.parent = parent
        if capture_content is None:
            capture_content = os.environ.get(_CAPTURE_ENV, "").lower() in ("1", "true", "yes")
        self.capture = capture_content
        self.provider = ""
        self.model = ""
        self._run: Span | None = None
        self._run_ctx: Any = None
        self._chat: Span | None = None
        self._cell: Span | None = None
        self._cell_ctx: Any = None
        #: Context tokens of the spans made current, innermost last (detached in that order).
        self._tokens: list[tuple[Span, Any]] = []

    def __call__(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def _enter(self, span: Span, ctx: Any) -> None:
        """Make ``span`` current in the run's task until :meth:`_leave`."""
        self._tokens.append((span, otel_context.attach(ctx)))

    def _leave(self, span: Span | None) -> None:
        """Undo :meth:`_enter` for ``span`` and whatever was entered after it."""
        if span is None or all(s is not span for s, _ in self._tokens):
            return
        while self._tokens:
            entered, token = self._tokens.pop()
            otel_context.detach(token)
            if entered is span:
                return

    # -- spans -----------------------------------------------------------------------------

    def _gen_ai(self, operation: str) -> dict[str, Any]:
        return {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
        }

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        self.provider, _, self.model = e.model.partition(":")
        parent = self.parent if self.parent is not None else otel_context.get_current()
        attrs = {
            **self._gen_ai("invoke_agent"),
            "gen_ai.agent.name": "nbagent",
            "gen_ai.conversation.id": e.run_id,
            "nbagent.turn": e.turn,
            "nbagent.tools": [str(t.get("name")) for t in e.tools],
        }
        if self.capture:
            attrs["nbagent.task"] = _clip(e.task)
        self._run = self.tracer.start_span(
            "invoke_agent nbagent", context=parent, attributes=attrs, start_time=_ns(e.time)
        )
        self._run_ctx = trace.set_span_in_context(self._run, parent)
        self._enter(self._run, self._run_ctx)

    def _start_chat(self, when: float) -> None:
        if self._run is None:
            return
        self._chat = self.tracer.start_span(
            f"chat {self.model}",
            context=self._run_ctx,
            kind=SpanKind.CLIENT,
            attributes=self._gen_ai("chat"),
            start_time=_ns(when),
        )
        self._enter(self._chat, trace.set_span_in_context(self._chat, self._run_ctx))

    def _on_StepStarted(self, e: ev.StepStarted) -> None:
        self._start_chat(e.time)

    def _on_PlanMade(self, e: ev.PlanMade) -> None:
        if self._chat is not None:  # that call asked for the plan; the step's own call follows
            self._leave(self._chat)
            self._chat.set_attribute("nbagent.plan", True)
            if self.capture:
                self._chat.set_attribute("nbagent.plan_text", _clip(e.text))
            self._chat.end(end_time=_ns(e.time))
        self._start_chat(e.time)

    def _on_ModelRetry(self, e: ev.ModelRetry) -> None:
        if self._chat is not None:
            self._chat.add_event(
                "nbagent.model_retry",
                {"reason": e.reason, "attempt": e.attempt, "delay": e.delay},
                timestamp=_ns(e.time),
            )

    def _on_ModelReplied(self, e: ev.ModelReplied) -> None:
        chat, self._chat = self._chat, None
        if chat is None:
            return
        self._leave(chat)
        chat.set_attribute("gen_ai.usage.input_tokens", e.usage.input_tokens)
        chat.set_attribute("gen_ai.usage.output_tokens", e.usage.output_tokens)
        if e.usage.cached_tokens:
            chat.set_attribute("gen_ai.usage.cache_read.input_tokens", e.usage.cached_tokens)
        if e.finish_reason:
            chat.set_attribute("gen_ai.response.finish_reasons", [e.finish_reason])
        if self.capture:
            message = {"role": "assistant", "parts": [{"type": "text", "content": e.text}]}
            chat.set_attribute("gen_ai.output.messages", _json([message]))
        chat.end(end_time=_ns(e.time))

    def _on_CodeProposed(self, e: ev.CodeProposed) -> None:
        if self._run is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "run_python",
            "gen_ai.tool.type": "function",
            "nbagent.step": e.step,
        }
        if self.capture:
            attrs["gen_ai.tool.call.arguments"] = _json({"code": e.code})
        self._cell = self.tracer.start_span(
            "execute_tool run_python", context=self._run_ctx, attributes=attrs,
            start_time=_ns(e.time),
        )  # fmt: skip
        self._cell_ctx = trace.set_span_in_context(self._cell, self._run_ctx)
        self._enter(self._cell, self._cell_ctx)

    def _on_ToolCalled(self, e: ev.ToolCalled) -> None:
        parent = self._cell_ctx if self._cell is not None else self._run_ctx
        if parent is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": e.name,
            "gen_ai.tool.type": "function",
            "nbagent.step": e.step,
        }
        if self.capture:
            attrs["gen_ai.tool.call.arguments"] = _json(e.arguments)
            if e.error is None:
                attrs["gen_ai.tool.call.result"] = _json(e.result)
        span = self.tracer.start_span(
            f"execute_tool {e.name}", context=parent, attributes=attrs,
            start_time=_ns(e.time - e.duration),
        )  # fmt: skip
        if e.error is not None:
            span.set_attribute("error.type", "ToolCallError")
            span.set_status(Status(StatusCode.ERROR, e.error))
        span.end(end_time=_ns(e.time))

    def _on_CellFinished(self, e: ev.CellFinished) -> None:
        cell, self._cell, self._cell_ctx = self._cell, None, None
        if cell is None:
            return
        self._leave(cell)
        cell.set_attribute("nbagent.cell.status", e.status)
        if e.status != "ok":
            cell.set_attribute("error.type", _error_type(e))
            cell.set_status(Status(StatusCode.ERROR, e.note or f"the code ended: {e.status}"))
        if self.capture:
            cell.set_attribute("gen_ai.tool.call.result", _clip(_outputs_text(e.outputs)))
        cell.end(end_time=_ns(e.time))

    def _on_CodeSkipped(self, e: ev.CodeSkipped) -> None:
        cell, self._cell, self._cell_ctx = self._cell, None, None
        if cell is not None:
            self._leave(cell)
            cell.set_attribute("nbagent.cell.status", "skipped")
            cell.end(end_time=_ns(e.time))

    def _on_RunFinished(self, e: ev.RunFinished) -> None:
        self._leave(self._run)  # and a chat or cell still current
        failed = e.status == "failed"
        for span in (self._chat, self._cell):
            if span is not None:  # cut short by the end of the run
                if failed:
                    span.set_attribute("error.type", e.error_type or "failed")
                    span.set_status(Status(StatusCode.ERROR, e.reason))
                span.end(end_time=_ns(e.time))
        self._chat = self._cell = None
        run, self._run = self._run, None
        if run is None:
            return
        run.set_attribute("gen_ai.usage.input_tokens", e.usage.input_tokens)
        run.set_attribute("gen_ai.usage.output_tokens", e.usage.output_tokens)
        run.set_attribute("nbagent.status", e.status)
        run.set_attribute("nbagent.steps", e.steps)
        run.set_attribute("nbagent.reason", e.reason)
        if failed:
            run.set_attribute("error.type", e.error_type or "failed")
            run.set_status(Status(StatusCode.ERROR, e.reason))
        elif self.capture and e.answer is not None:
            run.set_attribute("nbagent.answer", _clip(e.answer))
        run.end(end_time=_ns(e.time))


def _error_type(e: ev.CellFinished) -> str:
    for out in e.outputs:
        if out.get("output_type") == "error" and out.get("ename"):
            return str(out["ename"])
    return e.status


def _outputs_text(outputs: tuple[dict[str, Any], ...]) -> str:
    parts: list[str] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(str(out.get("text", "")))
        elif kind == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        else:
            data = out.get("data") or {}
            if "text/plain" in data:
                parts.append(str(data["text/plain"]) + "\n")
    return "".join(parts)
