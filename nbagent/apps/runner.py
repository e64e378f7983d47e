"""Many agent runs, each with its own agent and transcript: the skeleton of batch and eval.

:mod:`nbagent.apps.batch` (a tasks file) and :mod:`nbagent.apps.evaluate` (a scored question set)
differ in what a task is, what a record holds and which errors stop everything; what they
share is here:

* :class:`AgentSpec`: what every run's agent is made of — the model setting and one
  :class:`~nbagent.loop.options.AgentOptions` (each run sets its own working directory and data);
  :meth:`AgentSpec.probe` checks the model setting once before anything runs (a missing model
  or a bad model string fails once, not once per task);
* :meth:`AgentSpec.run`: one fresh :class:`~nbagent.loop.agent.Agent` on one task with a
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nbagent.core.errors import NbAgentError
from nbagent.core.events import Event, RunFinished
from nbagent.loop.options import AgentOptions

if TYPE_CHECKING:
    from nbagent.llm.base import ChatModel

__all__ = ["AgentSpec", "Outcome", "run_bounded"]

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


@dataclass(frozen=True)
class AgentSpec:
    """What every run's :class:`~nbagent.loop.agent.Agent` is made of."""

    #: ``[provider:]name`` (None: ``$NBAGENT_MODEL``), or a ready chat model shared by the runs.
    model: str | ChatModel | None = None
    base_url: str | None = None
    api_key: str | None = None
    options: AgentOptions = field(default_factory=AgentOptions)

    async def probe(self) -> None:
        """Make (and close) the model the spec names, so that a bad setting fails now."""
        if self.model is None or isinstance(self.model, str):
            from nbagent.llm import make_model

            probe = make_model(
                self.model, base_url=self.base_url, api_key=self.api_key, vision=self.options.vision
            )
            await probe.aclose()

    async def run(
        self,
        task: str,
        notebook: Path,
        *,
        catch: tuple[type[Exception], ...] = (Exception,),
        fatal: tuple[type[Exception], ...] = (),
        **per_run: Any,
    ) -> Outcome:
        """Run one fresh agent on ``task`` (its options with ``per_run`` changes, e.g.
        ``workdir``), its transcript in ``notebook``.

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
            options = self.options.replace(**per_run)
            agent = Agent(self.model, base_url=self.base_url, api_key=self.api_key, options=options)
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
