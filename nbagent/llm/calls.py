"""Calling a model when you want the answer, not the stream: ``await complete(model, msgs)``.

The seam (:class:`~nbagent.llm.base.ChatModel`) is a stream because the UI shows text as it
arrives; many callers (planning, summaries, tests) only need the final
:class:`~nbagent.llm.base.Completion`. This drains the stream for them, closing it in every case.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from nbagent.core.errors import ModelResponseError
from nbagent.llm.base import ChatModel, ChatParams, Completion, Message, StreamItem

__all__ = ["complete"]


async def complete(model: ChatModel, messages: Sequence[Message], **kw: Any) -> Completion:
    """Send ``messages`` and return the whole reply (text pieces and restarts are dropped).

    Args:
        model: Any chat model, e.g. from :func:`nbagent.llm.make_model`.
        messages: The conversation.
        **kw: ``tools``, ``max_tokens``, ``temperature``, ``stop``: the fields of ``ChatParams``.

    Raises:
        ModelError: The call failed after its retries (see :mod:`nbagent.core.errors`).
    """
    stream = cast("AsyncGenerator[StreamItem, None]", model.stream(messages, ChatParams(**kw)))
    async with contextlib.aclosing(stream) as items:
        async for item in items:
            if isinstance(item, Completion):
                return item
    raise ModelResponseError(
        f"{model.provider}:{model.name}: the reply stream ended without a reply"
    )
