"""How soon a run asks the model: whole processes, timed from before ``exec`` to the request.

Run from the repository root: ``python -m bench.startup_bench [--rounds N]``. A scripted
OpenAI-compatible server on loopback (tests/scripted_server.py) stamps each request when it
arrives (``time.time()``); the start is a stamp taken just before the process is spawned, so the
figure holds interpreter start-up, imports, argument parsing, the working-directory listing and
the request itself. Bytecode caching is on, as after ``pip install`` (see :func:`_env`).

1. **``nbagent run``** — ``python -m nbagent run TASK -o run.ipynb`` in a folder holding
   ``sales.csv``; the model answers at once. Against a plain script that imports httpx and posts
   the same kind of request (the floor of "a Python process that asks a model"). Target ≤ 0.35 s.
2. **The first ``%agent``** — a fresh IPython kernel (started first, not timed) runs one cell:
   ``%load_ext nbagent`` then ``%agent TASK`` (isolated mode: the agent starts its own kernel).
   The cell stamps its own start; the figure is the first request's arrival minus that stamp.
   Target ≤ 0.35 s.

Both report the quietest (smallest) figure of the rounds beside the median: the machine is
shared, and load only ever adds time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
TASK = "Which city sells most in sales.csv?"
SALES = "city,amount\nParis,120\nLyon,80\nParis,30\nNice,95\n"

PLAIN = """\
import sys, httpx
httpx.post(sys.argv[1] + "/chat/completions", json={"model": "bench", "stream": True,
    "messages": [{"role": "user", "content": "Task: hello"}]}).read()
"""


def _env(server: ScriptedServer | None = None) -> dict[str, str]:
    """The processes' environment: the scripted model, and bytecode caching on, as for any
    installed package (this machine's environment sets PYTHONDONTWRITEBYTECODE=1, which would
    recompile nbagent from source in every process while httpx comes from site-packages'
    compiled files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBAGENT_", "OPENAI_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if server is not None:
        env.update(server.env("bench"))
    env["PYTHONPATH"] = str(ROOT)
    return env


def _compile() -> None:
    """Write nbagent's bytecode once, as ``pip install`` does."""
    cmd = [sys.executable, "-m", "compileall", "-q", str(ROOT / "nbagent")]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, timeout=120)


def _first_request_after(server: ScriptedServer, start: float) -> float:
    requests = server.chat_requests
    assert requests, "no request reached the server"
    return requests[0].time - start


def bench_cli(rounds: int) -> dict[str, list[float]]:
    """Seconds from spawning ``nbagent run`` (and the plain httpx script) to its first request."""
    ours: list[float] = []
    plain: list[float] = []
    _compile()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sales.csv").write_text(SALES)
        for _ in range(rounds):
            for kind, sink in (("nbagent", ours), ("plain", plain)):
                with ScriptedServer(default="Paris sells most.") as server:
                    if kind == "nbagent":
                        cmd = [sys.executable, "-m", "nbagent", "run", TASK, "-q"]
                        cmd += ["-o", str(folder / "run.ipynb")]
                    else:
                        cmd = [sys.executable, "-c", PLAIN, server.base_url]
                    start = time.time()
                    proc = subprocess.run(
                        cmd, cwd=folder, env=_env(server), capture_output=True, text=True,
                        timeout=120,
                    )  # fmt: skip
                    assert proc.returncode == 0, (kind, proc.stderr[-2000:])
                    sink.append(_first_request_after(server, start))
                    if kind == "nbagent":
                        first = str(server.chat_requests[0].messages[-1]["content"])
                        assert "sales.csv (" in first, first
    return {"nbagent": ours, "plain": plain}


MAGIC_CELL = """\
import time as _t
_t0 = _t.time()
get_ipython().run_line_magic("load_ext", "nbagent")
_answer = get_ipython().run_line_magic("agent", "--max-steps 2 " + {task!r})
print("T0", repr(_t0))
"""

#: The floor in a kernel: a cell that imports httpx and asks once.
PLAIN_CELL = """\
import time as _t
_t0 = _t.time()
import os, httpx
httpx.post(os.environ["NBAGENT_BASE_URL"] + "/chat/completions", json={"model": "bench",
    "stream": True, "messages": [{"role": "user", "content": "Task: hello"}]}).read()
print("T0", repr(_t0))
"""


def bench_magic(rounds: int, *, plain: bool = False) -> list[float]:
    """Seconds from the start of the first ``%agent`` cell in a fresh kernel to its request
    (``plain``: of a cell that posts with httpx instead)."""
    from jupyter_client.manager import KernelManager

    out: list[float] = []
    _compile()
    cell = PLAIN_CELL if plain else MAGIC_CELL.format(task=TASK)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sales.csv").write_text(SALES)
        for _ in range(rounds):
            with ScriptedServer(default="Paris sells most.") as server:
                km = KernelManager(kernel_name="python3")
                km.start_kernel(cwd=tmp, env=_env(server), stderr=subprocess.DEVNULL)
                kc = km.client()
                kc.start_channels()
                try:
                    kc.wait_for_ready(timeout=60)
                    printed: list[str] = []

                    def keep(msg: dict[str, Any], printed: list[str] = printed) -> None:
                        if msg["msg_type"] == "stream":
                            printed.append(msg["content"]["text"])

                    reply = kc.execute_interactive(cell, timeout=120, output_hook=keep)
                    assert reply["content"]["status"] == "ok", reply["content"]
                    text = "".join(printed)
                    t0 = float(text.split("T0 ", 1)[1].split()[0])
                    out.append(_first_request_after(server, t0))
                finally:
                    kc.stop_channels()
                    km.shutdown_kernel(now=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup_bench")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cli = bench_cli(args.rounds)
    magic = {"%agent": bench_magic(args.rounds), "cell": bench_magic(args.rounds, plain=True)}
    for name, xs in (*cli.items(), *magic.items()):
        print(f"{name:8} min {min(xs):.3f} s  all {' '.join(f'{x:.3f}' for x in xs)}")


if __name__ == "__main__":
    main()
