"""What ``Agent.run`` returns: how the run ended, and every event of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from nbagent.core.errors import NbAgentError
from nbagent.core.events import Event, RunFinished, RunStatus, Usage

__all__ = ["RunResult"]


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``events`` holds every event of the run, in order."""

    answer: str | None
    status: RunStatus
    reason: str
    steps: int
    usage: Usage
    duration: float
    events: tuple[Event, ...]

    @property
    def ok(self) -> bool:
        return self.status == "answered"

    @classmethod
    def of(cls, events: Sequence[Event]) -> RunResult:
        """The result of a run's events; every field but ``events`` is its ``RunFinished``'s."""
        # RunFinished is the stream's last event (listener failures are reported before it).
        end = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
        if end is None:  # pragma: no cover - astream always ends with RunFinished or raises
            raise NbAgentError("the run ended without a final event")
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "events"]
        copied = {name: getattr(end, name) for name in fields}
        return cls(**copied, events=tuple(events))
