"""Whole-process benchmarks of the agent loop, each against a baseline from the same run.

Run from the repository root: ``python -m bench.agent_bench [--quick]``. A scripted
OpenAI-compatible server on loopback (tests/scripted_server.py) plays the model.

1. **Loop overhead** — a 100-step run (each step one small cell) as a whole process, against a
   plain script that makes the same kernel start, HTTP calls and executions with jupyter_client
   and httpx directly (:mod:`bench.agent_runs`). Target: ≤ 1.3×.
2. **Characters sent to the model** — the same scripted 4-step analysis of penguins.csv run by
   nbagent and by smolagents' CodeAgent (OpenAIServerModel against the same server, code run by
   its LocalPythonExecutor); every character of message text in every request counted.
   Target: nbagent ≤ 1/3 of smolagents.
3. **Cold start hidden** — the first reply held back 1.5 s; the kernel starts during the wait,
   so the second request should follow the first by at most 1.8 s (``warm=True``: the same
   with the kernel started beforehand, the floor).
   **Growth after a huge output** — a cell prints 100,000 lines; how many characters the next
   request grows by, nbagent against smolagents' CodeAgent (its observation cap is 50,000).
4. **Concurrency** — 8 agents (4 steps each, 0.4 s of model latency per reply) at once through
   ``asyncio.gather``, against the same 8 one after another, until every answer is in (kernel
   shutdowns, which follow the answers, reported apart). Target: ≤ 0.35 of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.scripted_server import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent


def _py(code: str, text: str = "Next step.") -> str:
    return f"{text}\n```python\n{code}\n```"


# -- 1. loop overhead ------------------------------------------------------------------------


def _counting_responder(steps: int) -> Any:
    def respond(body: dict[str, Any]) -> Reply:
        done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        if done >= steps - 1:
            return Reply(_py(f"final_answer({steps})"))
        return Reply(_py(f"n = {done + 1}\nprint(n)"))

    return respond


def bench_overhead(steps: int, rounds: int) -> tuple[list[float], list[float]]:
    from bench.startup_bench import _compile, _env

    ours: list[float] = []
    plain: list[float] = []
    env = _env()  # bytecode cached, as installed packages are (httpx's already is)
    _compile()
    with ScriptedServer(responder=_counting_responder(steps)) as server:
        for _ in range(rounds):
            for kind, sink in (("agent", ours), ("plain", plain)):
                t = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-m", "bench.agent_runs", kind, server.base_url, str(steps)],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                    timeout=600,
                    check=True,
                )
                sink.append(time.perf_counter() - t)
                assert out.stdout.strip() == str(steps), (kind, out.stdout, out.stderr[-500:])
    return ours, plain


# -- 2. characters sent ----------------------------------------------------------------------

ANALYSIS = [
    (
        "Load the data and look at it.",
        "import pandas as pd\ndf = pd.read_csv('penguins.csv')\nprint(df.shape)\nprint(df.head())",
    ),
    (
        "Average body mass per species.",
        "means = df.groupby('species')['body_mass_g'].mean().sort_values(ascending=False)\n"
        "print(means)",
    ),
    ("Check missing values.", "print(df.isna().sum())"),
    ("Report.", "final_answer(f'{means.index[0]} is heaviest: {means.iloc[0]:.0f} g')"),
]
TASK = "Which penguin species in penguins.csv is heaviest on average?"


def _text_chars(body: Any) -> int:
    total = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return total


def _nbagent_chars(workdir: Path) -> tuple[int, int, str]:
    from nbagent.llm import make_model
    from nbagent.loop.agent import Agent

    replies = [_py(code, thought) for thought, code in ANALYSIS]
    with ScriptedServer(replies) as server:
        model = make_model("openai:bench", base_url=server.base_url, api_key="")
        with Agent(model, workdir=workdir) as agent:
            result = agent.run(TASK)
        bodies = [r.json for r in server.chat_requests]
    return sum(_text_chars(b) for b in bodies), len(bodies), str(result.answer)


def _smolagents_chars(workdir: Path) -> tuple[int, int, str]:
    from smolagents import CodeAgent, OpenAIServerModel

    replies = [f"Thought: {thought}\n<code>\n{code}\n</code>" for thought, code in ANALYSIS]
    with ScriptedServer(replies) as server:
        model = OpenAIServerModel(model_id="bench", api_base=server.base_url, api_key="x")
        agent = CodeAgent(
            tools=[], model=model, additional_authorized_imports=["pandas"], verbosity_level=0
        )
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            answer = agent.run(TASK)
        finally:
            os.chdir(cwd)
        bodies = [r.json for r in server.chat_requests]
    return sum(_text_chars(b) for b in bodies), len(bodies), str(answer)


def bench_chars() -> dict[str, Any]:
    from nbagent.apps.demo import prepare_demo_data

    with tempfile.TemporaryDirectory() as tmp:
        prepare_demo_data(tmp)
        ours = _nbagent_chars(Path(tmp))
        try:
            theirs: tuple[int, int, str] | None = _smolagents_chars(Path(tmp))
        except ImportError:
            theirs = None
    return {"nbagent": ours, "smolagents": theirs}


# -- 3. cold start -----------------------------------------------------------------------------


def bench_cold_start(rounds: int, warm: bool = False) -> list[float]:
    """Seconds from the first request to the second, the first reply held back 1.5 s; with
    ``warm`` the kernel is started and awaited before the run (the floor: nothing to hide)."""
    from nbagent.core import sync
    from nbagent.llm import make_model
    from nbagent.loop.agent import Agent

    gaps = []
    for _ in range(rounds):
        with ScriptedServer([Reply(_py("x = 1"), delay=1.5), "done"]) as server:
            model = make_model("openai:bench", base_url=server.base_url, api_key="")
            with tempfile.TemporaryDirectory() as tmp, Agent(model, workdir=tmp) as agent:
                if warm:
                    sync.run_sync(agent.astart())
                assert agent.run("go").ok
            first, second = server.chat_requests[:2]
            gaps.append(second.time - first.time)
    return gaps


# -- 3b. growth after a huge output --------------------------------------------------------------

HUGE = "for i in range(100_000):\n    print(i)"


def _growth(bodies: list[Any]) -> tuple[int, int]:
    first, second = (_text_chars(b) for b in bodies[:2])
    return second - first, second


def bench_growth() -> dict[str, tuple[int, int] | None]:
    """How much the request after a 100,000-line print grows (characters of message text), and
    its size: nbagent against smolagents' CodeAgent, the same two scripted replies."""
    from nbagent.llm import make_model
    from nbagent.loop.agent import Agent

    res: dict[str, tuple[int, int] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        replies = [_py(HUGE, "Print everything."), _py("final_answer('done')", "Done.")]
        with ScriptedServer(replies) as server:
            model = make_model("openai:bench", base_url=server.base_url, api_key="")
            with Agent(model, workdir=tmp) as agent:
                assert agent.run("Print the numbers below 100,000.").ok
            res["nbagent"] = _growth([r.json for r in server.chat_requests])
        try:
            from smolagents import CodeAgent, OpenAIServerModel
        except ImportError:
            res["smolagents"] = None
            return res
        replies = [
            f"Thought: Print everything.\n<code>\n{HUGE}\n</code>",
            "Thought: Done.\n<code>\nfinal_answer('done')\n</code>",
        ]
        with ScriptedServer(replies) as server:
            peer = OpenAIServerModel(model_id="bench", api_base=server.base_url, api_key="x")
            CodeAgent(tools=[], model=peer, verbosity_level=0).run(
                "Print the numbers below 100,000."
            )
            res["smolagents"] = _growth([r.json for r in server.chat_requests])
    return res


# -- 4. concurrency ----------------------------------------------------------------------------


def bench_concurrency(
    n: int = 8, steps: int = 4, latency: float = 0.4
) -> dict[str, tuple[float, float]]:
    """Seconds for ``n`` agents one after another and all at once: ``"answers"`` until every
    answer is in (each agent from its start to its answer, kernel shutdowns not counted) and
    ``"whole"`` with the shutdowns."""
    from nbagent.llm import make_model
    from nbagent.loop.agent import Agent

    def script() -> list[Reply]:
        replies = [Reply(_py(f"v = {i}\nprint(v)"), delay=latency) for i in range(steps - 1)]
        return [*replies, Reply(_py("final_answer(v)"), delay=latency)]

    servers = [ScriptedServer().start() for _ in range(n)]
    try:

        async def one(server: ScriptedServer, tmp: str) -> tuple[float, float]:
            """(start, answer) times of one agent."""
            model = make_model("openai:bench", base_url=server.base_url, api_key="")
            t = time.perf_counter()
            async with Agent(model, workdir=tmp) as agent:
                result = await agent.arun("go")
                answered = time.perf_counter()
                assert result.answer == str(steps - 2), result
            return t, answered

        async def sequential(tmp: str) -> tuple[float, float]:
            t = time.perf_counter()
            spans = []
            for server in servers:
                server.add(*script())
                spans.append(await one(server, tmp))
            return sum(b - a for a, b in spans), time.perf_counter() - t

        async def together(tmp: str) -> tuple[float, float]:
            for server in servers:
                server.add(*script())
            t = time.perf_counter()
            spans = await asyncio.gather(*(one(s, tmp) for s in servers))
            return max(b for _, b in spans) - t, time.perf_counter() - t

        with tempfile.TemporaryDirectory() as tmp:
            seq = asyncio.run(sequential(tmp))
            par = asyncio.run(together(tmp))
    finally:
        for server in servers:
            server.stop()
    return {"answers": (seq[0], par[0]), "whole": (seq[1], par[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5

    ours, plain = bench_overhead(100, rounds)
    o, p = statistics.median(ours), statistics.median(plain)
    print(
        f"1. 100-step run          nbagent {o:6.2f} s   plain jupyter_client+httpx {p:6.2f} s"
        f"   ratio {o / p:.2f}x   (target <= 1.30x)"
    )

    chars = bench_chars()
    n_chars, n_req, n_ans = chars["nbagent"]
    line = f"2. chars sent, 4 steps   nbagent {n_chars:,} in {n_req} requests ({n_ans!r})"
    if chars["smolagents"] is not None:
        s_chars, s_req, _ = chars["smolagents"]
        line += (
            f"   smolagents CodeAgent {s_chars:,} in {s_req} requests"
            f"   ratio {n_chars / s_chars:.2f}   (target <= 0.33)"
        )
    else:
        line += "   smolagents not installed (pip install 'smolagents[openai]')"
    print(line)

    gaps = bench_cold_start(3 if args.quick else 5)
    print(
        f"3. cold start hidden     first reply held 1.5 s; second request after "
        f"{statistics.median(gaps):.2f} s (median of {len(gaps)})   (target <= 1.80 s)"
    )

    growth = bench_growth()
    ours_growth = growth["nbagent"]
    theirs_growth = growth["smolagents"]
    assert ours_growth is not None
    print(
        f"3b. growth after a 100,000-line print   nbagent +{ours_growth[0]:,} characters"
        + (f"   smolagents CodeAgent +{theirs_growth[0]:,}" if theirs_growth else "")
    )

    conc = bench_concurrency()
    seq, par = conc["answers"]
    print(
        f"4. 8 agents at once      together {par:5.2f} s   one after another {seq:5.2f} s"
        f"   ratio {par / seq:.2f}   (target <= 0.35; with kernel shutdowns: "
        f"{conc['whole'][1]:.2f} s vs {conc['whole'][0]:.2f} s)"
    )
    print(
        json.dumps({"overhead": [ours, plain], "chars": chars, "cold": gaps, "concurrency": conc})
    )


if __name__ == "__main__":
    main()
