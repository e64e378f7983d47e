"""OpenTelemetry, only when the application uses it: the agent's one hook into tracing.

Importing OpenTelemetry costs start-up time, and most runs are not traced, so nbagent never
imports it itself: a run is traced when ``opentelemetry.trace`` is already loaded, a tracer
provider is set (by the application, or ``opentelemetry-instrument``) and ``NBAGENT_OTEL`` is
not ``0``. Then :func:`run_tracer` returns a :class:`nbagent.loop.otel.RunTracer` — an event-stream
listener that turns the run's events into spans — and :func:`capture_context` the caller's
current OpenTelemetry context, so a blocking ``Agent.run`` (which runs on nbagent's loop thread)
still nests its spans under the caller's span.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["capture_context", "enabled", "run_tracer", "trace_run"]


def enabled() -> bool:
    """True when the application has loaded OpenTelemetry and tracing is not switched off."""
    if os.environ.get("NBAGENT_OTEL", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return "opentelemetry.trace" in sys.modules


def capture_context() -> Any:
    """The caller's OpenTelemetry context (None when tracing is off)."""
    if not enabled():
        return None
    from nbagent.loop.otel import current_context

    return current_context()


def run_tracer(parent: Any = None) -> Callable[[Any], None] | None:
    """A listener that traces one run under ``parent`` (default: the current context), or
    None when tracing is off."""
    if not enabled():
        return None
    from nbagent.loop.otel import RunTracer, configured

    return RunTracer(parent=parent) if configured() else None


def trace_run(listeners: list[Any], parent: Any = None) -> Callable[[], None]:
    """Put a run tracer first in ``listeners`` when tracing is on; returns what removes it."""
    tracer = run_tracer(parent)
    if tracer is None:
        return lambda: None
    listeners.insert(0, tracer)
    return lambda: listeners.remove(tracer) if tracer in listeners else None
