"""Which parts of a reply run: fenced Python blocks, in order, as one cell."""

from __future__ import annotations

import pytest

from nbagent.dialogue.parsing import parse_reply


def test_python_blocks_join_in_order_and_other_languages_stay_text() -> None:
    reply = (
        "Load it first.\n```python\nimport math\nx = 2\n```\n"
        'The format:\n```json\n{"a": 1}\n```\nThen\n```\nprint(math.sqrt(x))\n```\n'
    )
    parsed = parse_reply(reply)
    assert parsed.code == "import math\nx = 2\n\nprint(math.sqrt(x))"
    assert parsed.blocks == 2
    assert '{"a": 1}' in parsed.reasoning and "Load it first." in parsed.reasoning
    assert "import math" not in parsed.reasoning
    assert not parsed.unclosed


@pytest.mark.parametrize("tag", ["python", "py", "Python", "python3", "ipython", ""])
def test_accepted_fence_tags(tag: str) -> None:
    assert parse_reply(f"```{tag}\nprint(1)\n```").code == "print(1)"


@pytest.mark.parametrize("tag", ["bash", "json", "text", "output", "sql"])
def test_other_tags_never_run(tag: str) -> None:
    parsed = parse_reply(f"```{tag}\nrm -rf /\n```")
    assert not parsed.has_code
    assert "rm -rf /" in parsed.reasoning


def test_no_code_block_is_all_reasoning() -> None:
    parsed = parse_reply("The mean is 4.2.")
    assert not parsed.has_code and parsed.reasoning == "The mean is 4.2."


def test_unclosed_block_is_flagged_and_kept() -> None:
    parsed = parse_reply("Plan:\n```python\nfor i in range(3):\n    print(i)")
    assert parsed.unclosed
    assert parsed.code == "for i in range(3):\n    print(i)"


def test_tilde_and_long_fences_and_nested_backticks() -> None:
    reply = "~~~python\ns = '```'\nprint(s)\n~~~\n````py\nprint(2)\n````"
    parsed = parse_reply(reply)
    assert parsed.code == "s = '```'\nprint(s)\n\nprint(2)"


def test_indented_fence_is_dedented() -> None:
    parsed = parse_reply("  ```python\n  if True:\n      print(1)\n  ```")
    assert parsed.code == "if True:\n    print(1)"


def test_empty_blocks_do_not_count_as_code() -> None:
    assert not parse_reply("```python\n\n```").has_code
