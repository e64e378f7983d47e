"""The sync API, derived from the async core through one background event-loop thread.

nbagent is written once, in asyncio. Synchronous callers (scripts, the CLI, a blocking
``%agent``) reach it through :func:`run_sync`, which hands the coroutine to a single daemon
thread that runs one event loop for the whole process. Why one loop and not ``asyncio.run``
per call or ``nest_asyncio``:

* zmq.asyncio sockets and httpx connection pools are bound to the loop that created them, so a
  kernel started by one sync call must be driven by the same loop in the next call;
* a notebook already runs a loop in the main thread; nesting into it is fragile, while a
  separate thread never collides with it ("event loop already running" cannot happen);
* Ctrl-C lands in the calling thread: we cancel the task on the loop and wait (bounded) for its
  clean-up (interrupting the kernel, saving the transcript) before re-raising.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

__all__ = ["get_loop", "in_loop_thread", "run_sync", "sync_method"]

T = TypeVar("T")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None

#: How long a cancelled call may take to clean up after Ctrl-C before we give up waiting.
CANCEL_GRACE = 10.0


def get_loop() -> asyncio.AbstractEventLoop:
    """Return the process-wide background loop, starting its thread on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def _run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=_run, name="nbagent-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    """True when called from the background loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and block until it finishes.

    On KeyboardInterrupt (or any BaseException in the waiting thread) the task is cancelled and
    its clean-up is awaited for up to :data:`CANCEL_GRACE` seconds before the exception goes on.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run_sync() called from the nbagent loop thread; await instead")
    loop = get_loop()
    done = threading.Event()

    async def _wrapper() -> T:
        try:
            return await coro
        finally:
            done.set()

    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(_wrapper(), loop)
    try:
        return future.result(timeout)
    except BaseException:
        if not future.done():
            future.cancel()
            done.wait(CANCEL_GRACE)
        raise


def sync_method(afunc: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Derive a blocking method from an ``async def`` one (``execute = sync_method(aexecute)``)."""

    @functools.wraps(afunc)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(afunc(*args, **kwargs))  # type: ignore[arg-type]

    name = getattr(afunc, "__name__", "")
    wrapper.__name__ = name[1:] if name.startswith("a") else name
    wrapper.__doc__ = f"Blocking form of :meth:`{name}`.\n\n{afunc.__doc__ or ''}"
    return wrapper


def iterate(items: AsyncIterator[T]) -> Iterator[T]:
    """Iterate, blocking, over ``items`` run on the loop thread (closing the generator early
    cancels it there); an exception of the iterator is raised here."""
    import queue

    box: queue.Queue[tuple[str, Any]] = queue.Queue()

    async def pump() -> None:
        try:
            async for item in items:
                box.put(("item", item))
        except BaseException as exc:
            box.put(("error", exc))
            raise
        finally:
            box.put(("end", None))

    future = asyncio.run_coroutine_threadsafe(pump(), get_loop())
    try:
        while True:
            kind, item = box.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        if not future.done():
            future.cancel()
