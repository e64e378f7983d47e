"""``%agent --mcp`` and ``%config NbAgentMagics.mcp`` with the real test MCP server (stdio)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

pytest.importorskip("mcp")

from tests.llm_fixtures import ScriptedServer
from tests.test_magic import ip, magics  # noqa: F401 - fixtures

SERVER = str(Path(__file__).with_name("mcp_server") / "server.py")


def py(code: str) -> str:
    return f"Next.\n```python\n{code}\n```"


def test_magic_mcp_option_and_config(
    ip: Any,  # noqa: F811
    magics: Any,  # noqa: F811
    scripted_openai: ScriptedServer,
) -> None:
    command = f"{sys.executable} {SERVER}"
    scripted_openai.add(py("final_answer(convert(10, 'GBP'))"))
    answer = ip.run_line_magic("agent", f'--new --mcp "{command}" convert 10 EUR to GBP')
    assert answer == "8.5"
    system = scripted_openai.chat_requests[0].messages[0]["content"]
    assert "convert(amount: float, currency: str = 'USD') -> float" in system
    with pytest.raises(UsageError, match="--mcp shapes a new session"):
        ip.run_line_magic("agent", f'--mcp "{command}" again')
    # The configured servers apply to new sessions.
    magics.mcp = [command]
    try:
        scripted_openai.add(py("final_answer(get_rates()['USD'])"))
        assert ip.run_line_magic("agent", "--new rates?") == "1.1"
    finally:
        magics.mcp = []
    with pytest.raises(UsageError, match=r"command not found"):
        ip.run_line_magic("agent", '--new --mcp "no-such-server-cmd" hi')
