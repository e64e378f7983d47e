"""Host tools without a kernel: the decorator, schemas, the prompt lines, --tools specs, and
reading replies in the tool-call action format."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest

from nbagent import Tool, tool
from nbagent.apps.cli import main
from nbagent.core.errors import ConfigError, ToolError
from nbagent.core.events import Usage
from nbagent.dialogue.prompts import system_prompt
from nbagent.kernelside.toolstubs import MARKER, replay_setup, tools_prelude
from nbagent.llm.base import Completion, ToolCall
from nbagent.loop.actions import RUN_PYTHON, read_reply, refusals, tools_for
from nbagent.tools.tool import check_tools, describe_tools, load_tools


@tool
def search(query: str, limit: int = 10, *, lang: Literal["en", "fr"] = "en") -> list[dict]:
    """Search the catalogue.

    Args:
        query: Words to look for,
            all of them.
        limit: At most this many hits.
    """
    return [{"q": query}] * limit


@tool(name="fetch_rate", timeout=5)
async def rate(
    pair: Annotated[str, "like EURUSD"],
    when: Optional[str] = None,  # noqa: UP045
) -> float:
    """Exchange rate."""
    return 1.1


def test_signature_schema_and_summary() -> None:
    assert isinstance(search, Tool) and search.name == "search" and not search.is_async
    assert search.signature_text == (
        "search(query: str, limit: int = 10, *, lang: Literal['en', 'fr'] = 'en') -> list[dict]"
    )
    assert search.summary == "Search the catalogue."
    props = search.parameters["properties"]
    assert props["query"] == {"type": "string", "description": "Words to look for, all of them."}
    assert props["limit"] == {"type": "integer", "description": "At most this many hits."}
    assert props["lang"] == {"enum": ["en", "fr"]}
    assert search.parameters["required"] == ["query"]
    assert search("x", 2) == [{"q": "x"}, {"q": "x"}]  # still a plain function in the host


def test_decorator_options_async_and_annotated() -> None:
    assert rate.name == "fetch_rate" and rate.timeout == 5 and rate.is_async
    props = rate.parameters["properties"]
    assert props["pair"] == {"type": "string", "description": "like EURUSD"}
    assert props["when"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    spec = rate.spec()
    assert spec.name == "fetch_rate" and spec.parameters == rate.parameters
    assert rate.kernel_spec()["params"][1] == {
        "name": "when",
        "kind": "pos",
        "annotation": "Optional[str]",
        "default": "None",
    }


def test_nested_json_types() -> None:
    @tool
    def f(
        a: dict[str, list[int]], b: tuple[int, str], c: Any = None, d: float | None = 1.0
    ) -> None:
        """F."""

    props = f.parameters["properties"]
    assert props["a"] == {
        "type": "object",
        "additionalProperties": {"type": "array", "items": {"type": "integer"}},
    }
    assert props["b"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
    assert props["c"] == {} and props["d"] == {"anyOf": [{"type": "number"}, {"type": "null"}]}


class Frame:
    pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tool(lambda x: x), "not a Python identifier (pass name=... for a lambda)"),
        (lambda: tool(name="final_answer")(lambda: 1), "'final_answer' is taken by nbagent"),
        (lambda: tool(name="class")(lambda: 1), "'class' is not a Python identifier"),
        (lambda: tool(timeout=0)(search.fn), "timeout must be positive"),
        (lambda: tool(_varargs), "parameter 'args' is variadic positional"),
        (lambda: tool(_frame_param), "parameter 'df': type Frame cannot travel as JSON"),
        (lambda: tool(_int_keys), "dict keys must be str"),
        (lambda: tool(42), "@tool needs a function, got int"),
    ],
)
def test_misdeclared_tools_fail_clearly(make: Any, message: str) -> None:
    with pytest.raises(ToolError) as info:
        make()
    assert message in str(info.value)


def _varargs(*args: int) -> int:
    return 0


def _frame_param(df: Frame) -> int:
    return 0


def _int_keys(m: dict[int, str]) -> int:
    return 0


def test_prompt_lists_tools_compactly() -> None:
    text = describe_tools([search, rate])
    assert "- search(query: str, limit: int = 10, *, lang: Literal['en', 'fr'] = 'en')" in text
    assert text.endswith(
        "- fetch_rate(pair: str, when: Optional[str] = None) -> float: Exchange rate."
    )
    assert "ToolCallError" in text
    assert describe_tools([]) == ""
    assert "call the function run_python" in system_prompt(text, action="tools")


def test_check_tools() -> None:
    assert check_tools([search, rate]) == (search, rate)
    with pytest.raises(ConfigError, match=r"tools\[1\] is the function _varargs, not a tool"):
        check_tools([search, _varargs])
    with pytest.raises(ConfigError, match="two tools are named 'search'"):
        check_tools([search, tool(name="search")(_one)])


def _one(x: int) -> int:
    return x


TOOLS_MODULE = '''
from nbagent import tool

@tool
def alpha(x: int) -> int:
    """Alpha."""
    return x

@tool
def beta(y: str) -> str:
    """Beta."""
    return y

both = [alpha, beta]
mixed = [alpha, print]
plain = len
'''


@pytest.fixture
def tools_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mytools_x8.py").write_text(TOOLS_MODULE)
    (tmp_path / "broken_x8.py").write_text("raise RuntimeError('no config file')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield tmp_path
    for name in ("mytools_x8", "broken_x8"):
        sys.modules.pop(name, None)


def test_load_tools_from_module_and_file(tools_dir: Path) -> None:
    assert [t.name for t in load_tools("mytools_x8:alpha")] == ["alpha"]
    assert [t.name for t in load_tools("mytools_x8:both")] == ["alpha", "beta"]
    assert [t.name for t in load_tools(f"{tools_dir / 'mytools_x8.py'}:beta")] == ["beta"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mytools_x8", "expected module:attribute, e.g. mytools:search"),
        ("mytools_x8:", "expected module:attribute"),
        ("no_such_module_x8:f", "cannot import no_such_module_x8: ModuleNotFoundError"),
        ("broken_x8:f", "cannot import broken_x8: RuntimeError: no config file"),
        ("missing/file.py:f", "no such file missing/file.py"),
        ("mytools_x8:gamma", "mytools_x8 has no attribute 'gamma'"),
        ("mytools_x8:plain", "plain is the function len, not a tool or a list of tools"),
        ("mytools_x8:mixed", "item 1 of mixed is the function print, not a tool"),
    ],
)
def test_load_tools_errors(tools_dir: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_tools(spec)
    assert message in str(info.value) and str(info.value).startswith(f"--tools {spec}:")


def test_cli_bad_tools_spec_is_a_usage_error(
    tools_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "do it", "--tools", "mytools_x8:plain", "--model", "openai:x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nbagent: --tools mytools_x8:plain: plain is the function len" in err
    assert err.count("\n") == 1


# -- the tool-call action format --------------------------------------------------------------


def completion(text: str = "", *calls: tuple[str, str], finish: str = "tool_calls") -> Completion:
    tool_calls = tuple(
        ToolCall(id=f"call_{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)
    )
    return Completion(text=text, finish_reason=finish, usage=Usage(), tool_calls=tool_calls)


def test_read_reply_tools_format() -> None:
    assert tools_for("tools") == (RUN_PYTHON,) and tools_for("code") == ()
    r = read_reply(completion("Let me look.", ("run_python", json.dumps({"code": "1+1"}))), "tools")
    assert (r.code, r.reasoning, r.call_id, r.extra_calls, r.problem) == (
        "1+1",
        "Let me look.",
        "call_0",
        (),
        "",
    )
    fenced = json.dumps({"code": "```python\nprint(2)\n```"})
    assert read_reply(completion("", ("run_python", fenced)), "tools").code == "print(2)"
    answer = read_reply(completion("The answer is 4.", finish="stop"), "tools")
    assert answer.code == "" and answer.call_id is None and answer.reasoning == "The answer is 4."
    # In the code format, calls are ignored and fenced code is read from the text.
    code = read_reply(completion("Run:\n```python\nx = 1\n```"), "code")
    assert code.code == "x = 1" and code.call_id is None


def test_read_reply_only_the_first_call_runs() -> None:
    r = read_reply(
        completion("", ("run_python", '{"code": "a = 1"}'), ("run_python", '{"code": "b = 2"}')),
        "tools",
    )
    assert r.code == "a = 1" and [c.id for c in r.extra_calls] == ["call_1"]
    (refusal,) = refusals(r.extra_calls)
    assert refusal.role == "tool" and refusal.tool_call_id == "call_1"
    assert "only the first run_python call of a reply runs" in refusal.text


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (("python", '{"code": "1"}'), "There is no function 'python'; the only one is run_python."),
        (("search", '{"query": "x"}'), "search() is a Python function in the kernel"),
        (("run_python", "print(1)"), 'run_python needs JSON arguments {"code": "<python source>"}'),
        (("run_python", '{"src": "1"}'), "run_python needs JSON arguments"),
        (("run_python", '{"code": "  "}'), "run_python got empty code"),
    ],
)
def test_read_reply_bad_calls_become_corrections(call: tuple[str, str], problem: str) -> None:
    r = read_reply(completion("", call), "tools", host_tools={"search"})
    assert r.code == "" and r.call_id == "call_0" and problem in r.problem


# -- kernel-side sources (their behaviour is tested against real kernels elsewhere) ------------


def test_stub_sources_compile_and_carry_the_specs() -> None:
    specs = [search.kernel_spec(), rate.kernel_spec()]
    live = tools_prelude(specs)
    compile(live, "<live>", "exec")
    assert "<nbagent-tools>" in live and "pre_run_cell" in live and MARKER[1:] in live
    replay = replay_setup(specs, {"search": [{"result": [1, "\x00"]}, {"error": "boom"}]})
    compile(replay, "<replay>", "exec")
    assert "raw_input" not in replay and "boom" in replay
    assert tools_prelude([]) == "" and replay_setup([], {}) == ""
