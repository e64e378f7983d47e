"""Shared test configuration. Area fixtures live in tests/*_fixtures.py, registered here."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.llm_fixtures",
    "tests.kernel_fixtures",
    "tests.browser_fixtures",
    "tests.gateway_fixtures",
]
