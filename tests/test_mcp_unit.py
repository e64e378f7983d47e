"""MCP tool conversion rules on their own: names, stubs from JSON schemas, results, specs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbagent.core.errors import ConfigError
from nbagent.kernelside.toolstubs import tools_prelude
from nbagent.tools.mcp import McpServer, parse_servers
from nbagent.tools.mcp.convert import (
    McpTool,
    McpToolFailed,
    assign_names,
    identifier,
    tool_output,
    type_text,
)
from nbagent.tools.mcp.spec import expand_header

types = pytest.importorskip("mcp_types")


def test_identifiers() -> None:
    assert identifier("get-rates") == "get_rates"
    assert identifier("fs.read file") == "fs_read_file"
    assert identifier("2fa") == "_2fa"
    assert identifier("class") == "class_"
    assert identifier("") == "tool"


def test_clashes_get_the_servers_name() -> None:
    names = assign_names(
        [("github", ["search", "open", "get-issue"]), ("web search", ["search", "fetch"])],
        taken=["fetch"],
    )
    # search: on two servers; open: a builtin; fetch: a @tool of the agent.
    assert names == [
        ["github_search", "github_open", "get_issue"],
        ["web_search_search", "web_search_fetch"],
    ]
    assert assign_names([("a", ["final_answer", "x", "x"])]) == [["a_final_answer", "x", "a_x"]]


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": "string"}, "str"),
        ({"type": "number"}, "float"),
        ({"type": "integer"}, "int"),
        ({"type": ["string", "null"]}, "str | None"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "int | None"),
        ({"type": "array", "items": {"type": "string"}}, "list[str]"),
        ({"type": "object", "additionalProperties": {"type": "number"}}, "dict[str, float]"),
        ({"type": "object", "properties": {"a": {}}}, "dict"),
        ({"enum": ["a", "b"]}, "Literal['a', 'b']"),
        ({"$ref": "#/defs/X"}, "Any"),
        ({}, "Any"),
    ],
)
def test_type_text(schema: dict[str, Any], text: str) -> None:
    assert type_text(schema) == text


def make_tool(calls: list[Any], **kw: Any) -> McpTool:
    async def call(name: str, arguments: dict[str, Any]) -> Any:
        calls.append((name, arguments))
        return types.CallToolResult(
            content=[types.TextContent(text="1.5")], structured_content={"result": 1.5}
        )

    options: dict[str, Any] = {
        "name": "convert_it",
        "remote_name": "convert-it",
        "server": "fx",
        "description": "Convert money.\n\nMore text.",
        "input_schema": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "default": "USD", "description": "target"},
                "from": {"type": "number", "description": "the amount"},
                "note": {"type": "string"},
            },
            "required": ["from"],
        },
        "output_schema": {
            "type": "object",
            "properties": {"result": {"type": "number"}},
            "required": ["result"],
        },
        "call": call,
    }
    options.update(kw)
    return McpTool(**options)


def test_stub_from_the_schemas_and_arguments_mapped_back() -> None:
    calls: list[Any] = []
    t = make_tool(calls)
    # Required first; a keyword becomes an identifier; the wrapped result type is the return.
    expected = "convert_it(from_: float, unit: str = 'USD', note: str = None) -> float"
    assert t.signature_text == expected
    assert t.summary == "Convert money."
    assert "Args:\n    from_: the amount\n    unit: target" in t.description
    assert "MCP tool 'convert-it' of server 'fx'" in t.description
    out = asyncio.run(t.fn(10, note=None))
    assert out.value == 1.5 and out.display == ()
    # Unset and None optional arguments are not sent: the server applies its defaults.
    assert calls == [("convert-it", {"from": 10})]
    asyncio.run(t.fn(from_=2, unit="GBP"))
    assert calls[-1] == ("convert-it", {"from": 2, "unit": "GBP"})
    # The kernel stub is built from the same spec as a @tool's.
    assert "convert_it" in tools_prelude([t.kernel_spec()])


def test_return_annotations() -> None:
    assert make_tool([], output_schema=None).signature_text.endswith("-> str")
    dict_out = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert make_tool([], output_schema=dict_out).signature_text.endswith("-> dict[str, int]")
    two = {"type": "object", "properties": {"result": {}, "x": {}}, "required": ["result"]}
    assert make_tool([], output_schema=two).signature_text.endswith("-> dict")


def test_results() -> None:
    text = types.CallToolResult(content=[types.TextContent(text="a"), types.TextContent(text="b")])
    assert tool_output(text, unwrap=False).value == "a\nb"
    wrapped = types.CallToolResult(content=[], structured_content={"result": [1, 2]})
    assert tool_output(wrapped, unwrap=True).value == [1, 2]
    assert tool_output(wrapped, unwrap=False).value == {"result": [1, 2]}
    image = types.CallToolResult(
        content=[
            types.ImageContent(data="iVBORw0=", mime_type="image/png"),
            types.TextContent(text="caption"),
            types.EmbeddedResource(
                resource=types.TextResourceContents(uri="file:///a.txt", text="inside")
            ),
        ]
    )
    out = tool_output(image, unwrap=False)
    assert out.value == "caption\ninside"
    assert out.display[0]["image/png"] == "iVBORw0="
    failed = types.CallToolResult(content=[types.TextContent(text="no such city")], is_error=True)
    with pytest.raises(McpToolFailed, match=r"^no such city$"):
        tool_output(failed, unwrap=False)


def test_server_specs() -> None:
    a, b, c = parse_servers(
        ["python server.py --flag 'two words'", "https://example.com/mcp", {"command": ["x"]}]
    )
    assert a.command == ("python", "server.py", "--flag", "two words") and not a.url
    assert b.url == "https://example.com/mcp" and b.label == "https://example.com/mcp"
    assert c.command == ("x",)
    assert McpServer(url="https://u:pw@h/mcp").label == "https://h/mcp"
    for bad, message in [
        ([""], "is empty"),
        ([3], "give a command, a URL or an McpServer"),
        ([{"nope": 1}], "unexpected keyword"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_servers(bad)
    with pytest.raises(ConfigError, match="must start with http"):
        McpServer(url="ftp://x")
    with pytest.raises(ConfigError, match="apply to a server given by URL"):
        McpServer("x", headers={"A": "b"})
    with pytest.raises(ConfigError, match="timeout must be positive"):
        McpServer("x", timeout=0)
    assert expand_header("Bearer ${TOK}", {"TOK": "t1"}) == "Bearer t1"
    with pytest.raises(ConfigError, match=r"\$\{TOK\}, which is not set"):
        expand_header("Bearer ${TOK}", {})


def test_cli_options_reach_run_batch_and_eval() -> None:
    from nbagent.apps.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["run", "t", "--mcp", "python s.py", "--mcp-env", "KEY", "--mcp-env", "A=1",
         "--mcp", "https://h/mcp", "--mcp-header", "Authorization=Bearer ${TOK}"]
    )  # fmt: skip
    stdio, http = args.mcp
    assert stdio.command == ("python", "s.py") and stdio.pass_env == ("KEY",)
    assert dict(stdio.env) == {"A": "1"}
    assert http.url == "https://h/mcp" and dict(http.headers) == {"Authorization": "Bearer ${TOK}"}
    for argv in (["batch", "tasks.jsonl", "-o", "out"], ["eval", "dir"]):
        assert parser.parse_args([*argv, "--mcp", "python s.py"]).mcp == ["python s.py"]
    bad_options = [
        ["--mcp-header", "A=b"],
        ["--mcp", "python s.py", "--mcp-header", "A=b"],
        ["--mcp", "https://h", "--mcp-env", "A"],
        ["--mcp", "https://h", "--mcp-header", "A"],
    ]
    for bad in bad_options:
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "t", *bad])


def test_without_the_sdk_a_clear_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from nbagent.tools.mcp import hub_for

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real(name, *a)
    )
    assert hub_for([]) is None  # no servers: the SDK is not needed
    with pytest.raises(ConfigError, match=r"need the mcp package: pip install 'nbagent\[mcp\]'"):
        hub_for(["python server.py"])
