"""Realistic event sequences for panel and renderer tests (also imported by browser notebooks).

Outputs are real nbformat v4 output dicts: a PNG drawn by matplotlib, a pandas HTML table, a
stream, an IPython-style error with ANSI colours, and hostile outputs that would set
``window.__pwned`` if any of them ran in the page.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from nbagent.core import events as ev

HOSTILE_HTML = (
    '<b>bold survives</b><img src=x onerror="window.__pwned=1">'
    "<script>window.__pwned=1</script>"
    '<svg onload="window.__pwned=1"><circle r="5"/></svg>'
    '<a href="javascript:window.__pwned=1" id="__pwned">click me</a>'
    '<div style="background:url(javascript:window.__pwned=1);color:red">styled</div>'
)
HOSTILE_TEXT = '<img src=x onerror="window.__pwned=1"> & <script>window.__pwned=1</script>'
ANSWER = "The mean of y is 4.5; the plot shows a straight line."
CODE_1 = (
    "import pandas as pd\ndf = pd.DataFrame({'x': range(10), 'y': [i / 2 for i in range(10)]})\n"
)
CODE_1 += "print('rows:', len(df))\ndf.head(3)"
CODE_2 = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(4, 2.4))\n"
    "ax.plot(df.x, df.y, marker='o')\n"
    "ax.set_title('y against x')\n"
    "plt.show()\n"
    "display(HTML(untrusted_html))  # data from the web, may be hostile"
)


def png_output() -> dict[str, Any]:
    """A display_data output holding a real PNG drawn by matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=80)
    ax.plot(range(10), [i / 2 for i in range(10)], marker="o")
    ax.set_title("y against x")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
            "text/plain": "<Figure size 320x192 with 1 Axes>",
        },
        "metadata": {},
    }


def table_output() -> dict[str, Any]:
    """An execute_result with a pandas DataFrame's HTML and text."""
    import pandas as pd

    df = pd.DataFrame({"x": range(3), "y": [0.0, 0.5, 1.0]})
    return {
        "output_type": "execute_result",
        "execution_count": 1,
        "data": {"text/html": df.to_html(), "text/plain": repr(df)},
        "metadata": {},
    }


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def error_output() -> dict[str, Any]:
    """An error output shaped like IPython's, ANSI colours included."""
    return {
        "output_type": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": [
            "\x1b[0;31m---------------------------------------------------------------\x1b[0m",
            "\x1b[0;31mZeroDivisionError\x1b[0m        Traceback (most recent call last)",
            "Cell \x1b[0;32mIn[3], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m"
            "\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m",
            "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
        ],
    }


def hostile_outputs() -> list[dict[str, Any]]:
    return [
        {"output_type": "display_data", "data": {"text/html": HOSTILE_HTML}, "metadata": {}},
        {
            "output_type": "display_data",
            "data": {"application/javascript": "window.__pwned = 1", "text/plain": "<JS>"},
            "metadata": {},
        },
        {
            "output_type": "display_data",
            "data": {
                "image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg" width="120" '
                'height="16" onload="window.__pwned=1"><script>window.__pwned=1</script>'
                '<rect width="120" height="16" fill="#7a7"/></svg>'
            },
            "metadata": {},
        },
    ]


def cell(step: int, code: str, outputs: list[dict[str, Any]], **kw: Any) -> list[ev.Event]:
    """CodeProposed, one CellOutput per output, CellFinished."""
    events: list[ev.Event] = [ev.CodeProposed(step=step, code=code, reasoning=kw.pop("why", ""))]
    events += [ev.CellOutput(step=step, index=i, output=o) for i, o in enumerate(outputs)]
    events.append(
        ev.CellFinished(
            step=step,
            code=code,
            status=kw.pop("status", "ok"),
            execution_count=kw.pop("execution_count", step),
            duration=kw.pop("duration", 0.42),
            outputs=tuple(outputs),
            **kw,
        )
    )
    return events


def reply(step: int, text: str, tokens: int = 120) -> list[ev.Event]:
    """StepStarted, the reply streamed in small pieces, ModelReplied."""
    usage = ev.Usage(input_tokens=tokens * 5, output_tokens=tokens, requests=1)
    total = ev.Usage(input_tokens=tokens * 5 * step, output_tokens=tokens * step, requests=step)
    deltas = [ev.TextDelta(step=step, text=text[i : i + 7]) for i in range(0, len(text), 7)]
    return [
        ev.StepStarted(step=step),
        *deltas,
        ev.ModelReplied(
            step=step,
            text=text,
            finish_reason="stop",
            usage=usage,
            total_usage=total,
            duration=1.3,
        ),
    ]


def first_run() -> list[ev.Event]:
    """A complete run: a table, stdout, a plot, hostile outputs, an error-free answer."""
    table = table_output()
    step2_outputs = [png_output(), *hostile_outputs()]
    return [
        ev.RunStarted(
            run_id="run-1",
            task=f"Load the data, plot y against x. {HOSTILE_TEXT}",
            model="scripted-model",
        ),
        ev.KernelStatus(status="ready"),
        *reply(1, f"First I load the data.\n```python\n{CODE_1}\n```"),
        *cell(1, CODE_1, [stream("rows: 10\n"), table], why="First I load the data."),
        ev.Observation(step=1, text="rows: 10\n   x    y\n0  0  0.0"),
        *reply(2, f"Now the plot. {HOSTILE_TEXT}\n```python\n{CODE_2}\n```"),
        *cell(2, CODE_2, step2_outputs, why=f"Now the plot. {HOSTILE_TEXT}", duration=1.07),
        ev.ToolCalled(
            step=2,
            name="fetch_page",
            arguments={"url": "https://example.org"},
            result="<html>…</html>",
            duration=0.21,
        ),
        ev.Observation(step=2, text="[image]", images=1),
        *reply(3, f"final_answer({ANSWER!r})"),
        ev.RunFinished(
            status="answered",
            answer=ANSWER,
            reason="",
            steps=3,
            usage=ev.Usage(input_tokens=1800, output_tokens=360, requests=3),
            duration=7.9,
        ),
    ]


def follow_up_start() -> list[ev.Event]:
    """The start of a follow-up run, left running inside its first cell."""
    code = "import time\nfor i in range(60):\n    print('working', i)\n    time.sleep(1)"
    return [
        ev.RunStarted(
            run_id="run-2",
            task="Now fit a line and report the slope.",
            model="scripted-model",
            turn=2,
        ),
        *reply(1, f"I will fit it slowly.\n```python\n{code}\n```"),
        ev.CodeProposed(step=1, code=code, reasoning="I will fit it slowly."),
        ev.CellOutput(step=1, index=0, output=stream("working 0\n")),
        ev.CellOutput(step=1, index=0, output=stream("working 0\nworking 1\n")),
    ]
