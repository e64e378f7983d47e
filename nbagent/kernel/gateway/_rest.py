"""The gateway's REST API, with every failure turned into one clear line.

Launch, interrupt, restart, delete and liveness calls go through :meth:`GatewayREST.request`:
an unreachable gateway, one that does not answer in time, a refused token or an unknown
kernelspec become a :class:`~nbagent.core.errors.KernelStartupError` naming the gateway (never the
token) and what it said. The only module of nbagent outside ``nbagent.llm`` that imports httpx
(see docs/architecture.md, "The tree"): the asyncio client serves the backend, the blocking one
lets the exit-time reaper DELETE kernels from a thread when no event loop is left.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import httpx

from nbagent.core.errors import KernelStartupError
from nbagent.kernel.gateway._wire import gateway_error_text, redact

__all__ = ["ENV_TOKEN", "ENV_URL", "GatewayREST"]

ENV_URL = "JUPYTER_GATEWAY_URL"
ENV_TOKEN = "JUPYTER_GATEWAY_AUTH_TOKEN"
USER_AGENT = "nbagent (gateway backend)"


class GatewayREST:
    """REST calls to one gateway (see the module docstring)."""

    def __init__(
        self, base: str, shown: str, token: str | None, *, token_given: bool, timeout: float
    ) -> None:
        self.base, self.shown = base, shown
        self._token, self._token_given = token, token_given
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def headers(self) -> dict[str, str]:
        """``Authorization: token …`` when there is a token."""
        return {"Authorization": f"token {self._token}"} if self._token else {}

    def redact(self, text: str) -> str:
        return redact(text, self._token)

    def error_text(self, resp: httpx.Response) -> str:
        """The gateway's answer as one line (status, reason, its message)."""
        return self.redact(gateway_error_text(resp.status_code, resp.reason_phrase, resp.text))

    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        json: Any = None,
        late: str = "",
    ) -> httpx.Response:
        """One call; an unreachable or silent gateway becomes a KernelStartupError.

        ``late`` words the timeout ("did not launch … within 40 s").
        """
        timeout = self.timeout if timeout is None else timeout
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={**self.headers(), "User-Agent": USER_AGENT}, follow_redirects=False
            )
        try:
            return await self._client.request(
                method, self.base + path, json=json, timeout=httpx.Timeout(timeout, connect=10)
            )
        except httpx.TimeoutException:
            why = late or f"did not answer {method} {path} within {timeout:g} s"
            msg = f"the kernel gateway at {self.shown} {why}"
        except httpx.HTTPError as exc:
            msg = (
                f"cannot reach the kernel gateway at {self.shown} "
                f"({type(exc).__name__}: {exc or 'no answer'}); check the URL "
                f"(--gateway or {ENV_URL})"
            )
        raise KernelStartupError(self.redact(msg))

    async def launch_error(self, resp: httpx.Response, kernel_name: str) -> KernelStartupError:
        """Why a launch was refused: the token, an unknown kernelspec, or the gateway's words."""
        text = self.error_text(resp)
        where = f"the kernel gateway at {self.shown}"
        if resp.status_code == 401 or (resp.status_code == 403 and "Resource" not in text):
            if not self._token:
                hint = f"it needs a token: set {ENV_TOKEN}"
            elif self._token_given:
                hint = "check the token"
            else:
                hint = f"check the token in {ENV_TOKEN}"
            return KernelStartupError(f"{where} refused the request ({text}); {hint}")
        names = await self.kernelspec_names()
        if names is not None and kernel_name not in names:
            return KernelStartupError(
                f"{where} has no kernelspec {kernel_name!r} (it has: "
                f"{', '.join(sorted(names)) or 'none'}); it answered {text}"
            )
        return KernelStartupError(f"{where} could not start a {kernel_name!r} kernel: {text}")

    async def kernelspec_names(self) -> set[str] | None:
        """The gateway's kernelspecs, or None when it will not say."""
        with contextlib.suppress(Exception):
            resp = await self.request("GET", "/api/kernelspecs")
            if resp.status_code == 200:
                return set(resp.json()["kernelspecs"])
        return None

    async def has_kernel(self, kernel_id: str) -> bool:
        """False only when the gateway answers 404 for ``kernel_id``."""
        with contextlib.suppress(KernelStartupError):
            return (await self.request("GET", f"/api/kernels/{kernel_id}")).status_code != 404
        return True

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def delete_in_thread(self, kernel_id: str, timeout: float) -> threading.Thread:
        """DELETE a kernel from a new daemon thread, with no event loop (for the reaper)."""
        url, headers = f"{self.base}/api/kernels/{kernel_id}", self.headers()

        def delete() -> None:
            with contextlib.suppress(Exception), httpx.Client(timeout=timeout) as client:
                client.delete(url, headers=headers)

        thread = threading.Thread(target=delete, name="nbagent-reap", daemon=True)
        thread.start()
        return thread
