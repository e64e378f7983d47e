"""Control-channel requests to a running kernel, known by its connection file.

The ``%agent`` magic runs inside a notebook's kernel and blocks that kernel's main thread while
an agent works. Widget clicks (the panel's Stop, approval Run/Skip) arrive as comm messages on
the shell channel, which only the main thread would read. ipykernel 7 can run *subshells*:
extra threads that handle shell messages of their own while the main thread is busy. A subshell
is created with a ``create_subshell_request`` on the control channel, which a kernel answers
from its control thread even while a cell runs — so the magic asks its own kernel for one here,
over the documented wire protocol (JEP 91), without touching ipykernel's internals.

This is the only place outside the agent's own kernel session that opens a zmq socket, which is
why it lives in ``nbagent.kernel``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import zmq
from jupyter_client.session import Session

from nbagent.core.errors import KernelError

__all__ = ["channel_url", "create_subshell"]


def channel_url(info: Mapping[str, Any], port_key: str = "control_port") -> str:
    """The zmq URL of one channel (``shell_port``, ...) from a connection file's contents."""
    transport = info.get("transport", "tcp")
    ip, port = info["ip"], info[port_key]
    return f"{transport}://{ip}:{port}" if transport == "tcp" else f"{transport}://{ip}-{port}"


def create_subshell(connection_file: str | os.PathLike[str], timeout: float = 5.0) -> str:
    """Ask the kernel behind ``connection_file`` for a new subshell; return its id.

    Raises:
        KernelError: the file cannot be read, the kernel does not answer within ``timeout``,
            or it does not support subshells.
    """
    try:
        with open(connection_file, encoding="utf-8") as fh:
            info = json.load(fh)
        url = channel_url(info)
    except (OSError, ValueError, KeyError) as exc:
        raise KernelError(f"cannot read the kernel connection file: {exc}") from None
    session = Session(
        key=str(info.get("key", "")).encode(),
        signature_scheme=info.get("signature_scheme", "hmac-sha256"),
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(url)
        request = session.send(sock, "create_subshell_request", {})
        assert request is not None
        deadline_ms = int(timeout * 1000)
        while sock.poll(deadline_ms):
            _idents, frames = session.feed_identities(sock.recv_multipart())
            reply = session.deserialize(frames)
            if reply.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                continue
            content = reply.get("content", {})
            if content.get("status") == "ok" and isinstance(content.get("subshell_id"), str):
                return str(content["subshell_id"])
            raise KernelError(
                f"the kernel refused a subshell: {content.get('evalue') or content.get('status')}"
            )
        raise KernelError(f"the kernel did not answer a subshell request within {timeout:g} s")
    except zmq.ZMQError as exc:
        raise KernelError(f"cannot reach the kernel's control channel: {exc}") from None
    finally:
        sock.close()
