"""``nbagent demo``: the whole product on a fresh machine, with no API key and no network.

A small real data set ships in the package (Palmer penguins, CC0). Without a model configured,
a :class:`RecordedModel` plays back model replies written in advance — clearly labelled as
recorded — while everything else is real: the agent loop, a live kernel running the code, the
observations, the progress lines and the transcript, written to ``./nbagent-demo.ipynb``.
The replies react to what the kernel reports (whether pandas and matplotlib are installed), and
one step makes a mistake that the next one fixes, as a real model would. With a model
configured (``--model`` or ``$NBAGENT_MODEL``) the same task runs live.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from pathlib import Path

from nbagent.core.events import Usage
from nbagent.llm.base import ChatParams, Completion, Message, StreamItem

__all__ = ["DEMO_TASK", "RecordedModel", "demo_replies", "prepare_demo_data"]

DEMO_TASK = (
    "Which penguin species in penguins.csv is the heaviest on average, and by how much "
    "does it outweigh the next one? Show the distribution if you can plot."
)


class RecordedModel:
    """A :class:`~nbagent.llm.base.ChatModel` that plays back replies written in advance.

    ``replies`` is a list of reply texts, or a function of the conversation so far returning the
    next reply. Text streams in small chunks, so live displays behave as with a real model.
    """

    provider = "recorded"

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Sequence[Message]], str],
        *,
        name: str = "demo",
        chunk: int = 16,
        delay: float = 0.002,
        vision: bool = False,
    ) -> None:
        self.name = name
        self.vision = vision
        self._replies = replies
        self._chunk = chunk
        self._delay = delay
        self._served = 0
        self.total_usage = Usage()

    def _next(self, messages: Sequence[Message]) -> str:
        if callable(self._replies):
            return self._replies(messages)
        if self._served >= len(self._replies):
            return "I have no more recorded replies."
        return self._replies[self._served]

    async def stream(
        self, messages: Sequence[Message], params: ChatParams | None = None
    ) -> AsyncIterator[StreamItem]:
        """The next recorded reply, in pieces; ``params`` change nothing in a recording."""
        text = self._next(messages)
        self._served += 1
        for i in range(0, len(text), self._chunk):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield text[i : i + self._chunk]
        sent = sum(len(m.text) for m in messages)
        usage = Usage(input_tokens=sent // 4, output_tokens=len(text) // 4, requests=1)
        self.total_usage = self.total_usage + usage
        yield Completion(text=text, finish_reason="stop", usage=usage, model=self.name)

    async def aclose(self) -> None:
        return None


def prepare_demo_data(directory: str | Path) -> Path:
    """Copy the bundled ``penguins.csv`` into ``directory`` (kept if already there)."""
    target = Path(directory) / "penguins.csv"
    if not target.exists():
        source = resources.files("nbagent") / "data" / "penguins.csv"
        with resources.as_file(source) as path:
            shutil.copyfile(path, target)
    return target


_PROBE = """\
I'll start by checking which libraries the kernel has and peeking at the file.

```python
import csv, importlib.util
have = {m: importlib.util.find_spec(m) is not None for m in ("pandas", "matplotlib")}
print("available:", have)
with open("penguins.csv", newline="") as f:
    rows = list(csv.DictReader(f))
print(len(rows), "rows; columns:", ", ".join(rows[0]))
```"""

_PANDAS = [
    """\
pandas is available. Let me load the table and check its shape and missing values.

```python
import pandas as pd
df = pd.read_csv("penguins.csv")
print(df.shape)
df.isna().sum()
```""",
    """\
A few rows lack measurements; `mean()` skips them. Now the average body mass per species:

```python
df.groupby("species")["body_mass"].mean()
```""",
    """\
The column is called `body_mass_g`, not `body_mass`. Fixed, sorted, and plotted if I can:

```python
means = df.groupby("species")["body_mass_g"].mean().sort_values(ascending=False)
print(means.round(1))
if have["matplotlib"]:
    import matplotlib.pyplot as plt
    ax = df.boxplot(column="body_mass_g", by="species", grid=False, figsize=(6, 3.5))
    ax.set_title("Body mass by species"); ax.set_xlabel(""); ax.set_ylabel("grams")
    plt.suptitle(""); plt.tight_layout(); plt.show()
```""",
]

_STDLIB = [
    """\
pandas is not installed, so I'll use the standard library. Average body mass per species:

```python
from statistics import mean
masses = {}
for row in rows:
    if row["body_mass"] != "NA":
        masses.setdefault(row["species"], []).append(float(row["body_mass"]))
```""",
    """\
The column is called `body_mass_g`. Fixed:

```python
masses = {}
for row in rows:
    if row["body_mass_g"] != "NA":
        masses.setdefault(row["species"], []).append(float(row["body_mass_g"]))
means = dict(sorted(((s, mean(v)) for s, v in masses.items()), key=lambda kv: -kv[1]))
for species, grams in means.items():
    print(f"{species:10} {grams:8.1f} g  (n={len(masses[species])})")
```""",
]

_ANSWER_PANDAS = """\
Gentoo comes out clearly on top. I'll report the numbers computed above.

```python
top, second = means.index[0], means.index[1]
final_answer(
    f"{top} penguins are the heaviest, {means.iloc[0]:,.0f} g on average: "
    f"{means.iloc[0] - means.iloc[1]:,.0f} g more than {second} ({means.iloc[1]:,.0f} g)."
)
```"""

_ANSWER_STDLIB = """\
I'll report the numbers computed above.

```python
(top, m1), (second, m2) = list(means.items())[:2]
final_answer(
    f"{top} penguins are the heaviest, {m1:,.0f} g on average: "
    f"{m1 - m2:,.0f} g more than {second} ({m2:,.0f} g)."
)
```"""


def demo_replies(messages: Sequence[Message]) -> str:
    """The recorded model's policy: the next reply, given the conversation so far."""
    replies = sum(1 for m in messages if m.role == "assistant")
    if replies == 0:
        return _PROBE
    observed = " ".join(m.text for m in messages if m.role == "user")
    script = _PANDAS if "'pandas': True" in observed else _STDLIB
    answer = _ANSWER_PANDAS if script is _PANDAS else _ANSWER_STDLIB
    steps = [*script, answer]
    return steps[min(replies - 1, len(steps) - 1)]
