"""How much the model client adds on top of httpx when a long reply streams in.

Streams a reply of N small SSE events from the scripted server (loopback) through
``nbagent.llm`` (SSE decoding, delta assembly, completeness checks, retry wrapper) and, in the
same run, through a bare ``httpx`` loop (``aiter_lines`` + ``json.loads`` per event) as the
baseline. Prints medians. Run: ``python -m bench.llm_stream [--events 5000] [--runs 9]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from nbagent.llm import Message, complete, make_model
from tests.scripted_server import Reply, ScriptedServer

HI = [Message("user", "hi")]


async def _raw(client: httpx.AsyncClient, url: str) -> int:
    body = {"model": "m", "messages": [], "stream": True}
    n = 0
    async with client.stream("POST", url, json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                json.loads(line[len("data: ") :])
                n += 1
    return n


async def main(events: int, runs: int) -> None:
    text = "x" * (8 * events)
    with ScriptedServer(default=Reply(text, chunk_size=8)) as server:
        model = make_model("openai:bench", base_url=server.base_url, api_key="")
        ours: list[float] = []
        raw: list[float] = []
        async with httpx.AsyncClient() as client:
            url = server.base_url + "/chat/completions"
            await complete(model, HI)  # warm both paths
            await _raw(client, url)
            for _ in range(runs):
                start = time.perf_counter()
                reply = await complete(model, HI)
                ours.append(time.perf_counter() - start)
                assert reply.text == text
                start = time.perf_counter()
                await _raw(client, url)
                raw.append(time.perf_counter() - start)
        await model.aclose()
    mine, base = statistics.median(ours), statistics.median(raw)
    print(f"{events} events, median of {runs}:")
    print(f"  nbagent.llm  {mine * 1000:7.1f} ms")
    print(f"  bare httpx   {base * 1000:7.1f} ms  (baseline)")
    print(f"  overhead     {(mine / base - 1) * 100:+6.1f} %")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.runs))
