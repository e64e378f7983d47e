"""Many agent runs, each with its own agent and transcript: the skeleton of batch and eval.

:mod:`nbagent.apps.batch` (a tasks file) and :mod:`nbagent.apps.evaluate` (a scored question set)
differ in what a task is, what a record holds and which errors stop everything; what they
share is here:

* :func:`probe_model`: the model setting is checked once before anything runs (a missing
  model or a bad model string fails once, not once per task);
* :func:`run_agent`: one fresh :class:`~nbagent.loop.agent.Agent` on one task with a
  :class:`~nbagent.records.transcript.Transcript` listening; the run's end event, its errors
  (those the caller wants recorded rather than raised) and the transcript, saved when it has
  cells, come back as an :class:`Outcome`;
* :func:`run_bounded`: at most ``concurrency`` runs at once on one event loop (an
  ``asyncio.Semaphore``), each result handed to the caller as soon as it ends (so a record is
  written while the others still run), all results returned in the order of the items; if one
  raises, the others are cancelled and the error goes up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nbagent.core.errors import NbAgentError
from nbagent.core.events import Event, RunFinished

__all__ = ["Outcome", "probe_model", "run_agent", "run_bounded"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome:
    """How one agent run ended.

    Attributes:
        end: The run's last event (None when the run did not get that far).
        error: The exception caught (one of ``catch`` in :func:`run_agent`), if any.
        save_error: Why the transcript could not be saved, if it could not.
        saved: The transcript was written.
        started: When the run began (seconds since the epoch).
        seconds: Wall-clock time from the agent's creation to the transcript saved.
    """

    end: RunFinished | None
    error: Exception | None
    save_error: NbAgentError | None
    saved: bool
    started: float
    seconds: float

    @property
    def status(self) -> str:
        return self.end.status if self.end is not None else "failed"

    @property
    def answer(self) -> str | None:
        return self.end.answer if self.end is not None else None

    @property
    def steps(self) -> int:
        return self.end.steps if self.end is not None else 0


async def probe_model(options: Mapping[str, Any]) -> None:
    """Make (and close) the model the options name, so that a bad setting fails now."""
    model = options.get("model")
    if model is None or isinstance(model, str):
        from nbagent.llm import make_model

        probe = make_model(
            model,
            base_url=options.get("base_url"),
            api_key=options.get("api_key"),
            vision=options.get("vision"),
        )
        await probe.aclose()


async def run_agent(
    task: str,
    notebook: Path,
    options: Mapping[str, Any],
    *,
    catch: tuple[type[Exception], ...] = (Exception,),
    fatal: tuple[type[Exception], ...] = (),
) -> Outcome:
    """Run one fresh agent (``Agent(**options)``) on ``task``, its transcript in ``notebook``.

    Exceptions of a ``fatal`` type are raised (after the transcript is saved), other ones of
    a ``catch`` type are returned in the outcome, anything else is raised.
    """
    from nbagent.loop.agent import Agent
    from nbagent.records.transcript import Transcript

    transcript = Transcript(notebook)
    finished: list[RunFinished] = []

    def keep_end(event: Event) -> None:
        if isinstance(event, RunFinished):
            finished.append(event)

    started, t0 = time.time(), time.monotonic()
    error: Exception | None = None
    save_error: NbAgentError | None = None
    saved = False
    try:
        agent = Agent(**options)
        agent.add_listener(transcript)
        agent.add_listener(keep_end)
        async with agent:
            await agent.arun(task)
    except fatal:
        raise
    except catch as exc:
        error = exc
    finally:
        if transcript.nb.cells:
            try:
                transcript.save()
                saved = True
            except NbAgentError as exc:
                save_error = exc
    end = finished[-1] if finished else None
    return Outcome(end, error, save_error, saved, started, time.monotonic() - t0)


async def run_bounded(
    items: Sequence[T],
    run: Callable[[T], Awaitable[R]],
    *,
    concurrency: int,
    on_done: Callable[[R], object] | None = None,
) -> list[R]:
    """``run`` every item, at most ``concurrency`` at once (see the module docstring)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, item: T) -> tuple[int, R]:
        async with gate:
            return index, await run(item)

    tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
    results: dict[int, R] = {}
    try:
        for next_done in asyncio.as_completed(tasks):
            index, result = await next_done
            results[index] = result
            if on_done is not None:
                on_done(result)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [results[i] for i in range(len(items))]
