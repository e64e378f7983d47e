"""Processes timed by :mod:`bench.agent_bench`: the agent, and the same work done by hand.

``python -m bench.agent_runs agent URL N`` runs an nbagent ``Agent`` for N steps against the
scripted server at URL (each reply is one small cell; the last calls ``final_answer``).
``python -m bench.agent_runs plain URL N`` does the same kernel start, N HTTP calls and N
executions directly with jupyter_client and httpx — the floor an agent loop cannot beat.
Both print nothing but the answer, so the timing is the whole process.
"""

from __future__ import annotations

import json
import re
import sys

CODE = re.compile(r"```python\n(.*?)\n```", re.S)


def run_agent(url: str, steps: int) -> str:
    from nbagent.llm import make_model
    from nbagent.loop.agent import Agent

    model = make_model("openai:bench", base_url=url, api_key="")
    with Agent(model, max_steps=steps + 1) as agent:
        result = agent.run("Count the steps.")
    assert result.ok, result.reason
    return str(result.answer)


def run_plain(url: str, steps: int) -> str:
    import httpx
    from jupyter_client.manager import KernelManager

    km = KernelManager(transport="ipc")
    km.start_kernel(extra_arguments=["--HistoryManager.hist_file=:memory:"])
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.execute_interactive("def final_answer(x):\n    print('final answer:', x)", timeout=60)
    answer = ""
    messages = [{"role": "user", "content": "Count the steps."}]
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(steps + 1):
                reply = client.post(
                    f"{url}/chat/completions",
                    json={"model": "bench", "messages": messages, "stream": True},
                )
                text = ""
                for line in reply.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices") or []:
                            text += choice.get("delta", {}).get("content") or ""
                messages.append({"role": "assistant", "content": text})
                code = CODE.search(text)
                assert code is not None
                msg_id = kc.execute(code.group(1))
                output = ""
                while True:
                    msg = kc.get_iopub_msg(timeout=60)
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "stream":
                        output += msg["content"]["text"]
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        break
                if "final answer:" in output:
                    answer = output.split("final answer:", 1)[1].strip()
                    break
                messages.append({"role": "user", "content": output})
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return answer


def main() -> None:
    kind, url, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(run_agent(url, steps) if kind == "agent" else run_plain(url, steps))


if __name__ == "__main__":
    main()
