"""A run as a notebook: events in, an nbformat 4.5 notebook out, saved atomically.

:class:`Transcript` is an event listener. The notebook it builds reads top to bottom as the
run happened and re-executes in a plain ``python3`` kernel:

* a markdown cell per task (follow-ups append theirs);
* a first code cell that defines what the agent's kernel had and a plain kernel lacks
  (``final_answer``; for host tools, stubs that replay the results recorded during the run, per
  tool in call order), so re-execution works without nbagent and without the host;
* a markdown cell per plan, when planning is on;
* per step, a markdown cell with the model's reasoning and a code cell with the code, its real
  outputs and execution count; ``metadata.nbagent`` holds step, duration, status, the raw reply
  and the observation the model read (what ``--resume`` needs to restore the conversation), and
  for code a person edited before it ran, ``edited: true`` and the model's ``proposed_code``;
* cells that raised carry the ``raises-exception`` tag; cells that timed out, killed the kernel
  or were skipped carry ``skip-execution`` (nbclient) and ``nbval-skip``, and say why, so a
  re-run cannot hang or die;
* the final answer as a last markdown cell, and ``metadata.nbagent`` = {version, model, task,
  answer, steps, usage, started, ended, runs}.

Every write is validated (``nbformat.validate``) and atomic (temp file, fsync, ``os.replace``):
a crash or Ctrl-C leaves the last complete state, a failed write leaves the old file and raises
:class:`~nbagent.core.errors.TranscriptError`. Private MIME types of the agent's kernel are dropped.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbagent.core import events as ev
from nbagent.core.errors import ConfigError, TranscriptError
from nbagent.core.events import (
    CellFinished,
    CodeProposed,
    CodeSkipped,
    Event,
    InputsPushed,
    ModelReplied,
    NotebookCells,
    Observation,
    PlanMade,
    RunFinished,
    RunStarted,
    StepStarted,
    ToolCalled,
)
from nbagent.core.lazy import after_request, lazy
from nbagent.core.lazy import ready as lazy_ready
from nbagent.core.text import safe_text
from nbagent.core.version import __version__
from nbagent.dialogue.observe import ANSWER_MIME, SUMMARY_MIME
from nbagent.dialogue.workfiles import own_file
from nbagent.kernelside.prelude import SETUP_CELL, inputs_cell
from nbagent.kernelside.toolstubs import replay_setup

if TYPE_CHECKING:
    import nbformat
else:  # seconds to import where jsonschema's format checkers are installed: see lazy
    nbformat = lazy("nbformat")

__all__ = ["Transcript", "atomic_write_notebook", "check_output_path", "read_transcript"]


#: MIME types only the agent's own kernel produces; dropped so re-runs compare equal.
PRIVATE_MIME = frozenset({SUMMARY_MIME})
#: Characters of a reply or an answer shown in a markdown cell; the whole text is kept once,
#: in metadata (``reply``, ``answer``), so a 10 MB answer is not stored four times.
DISPLAY_LIMIT = 100_000
#: Characters of each run's answer kept in ``metadata.nbagent.runs``.
RUN_ANSWER_PREVIEW = 1_000
SKIP_TAGS = ("skip-execution", "nbval-skip")
#: The events after which an autosaving transcript writes its file.
_SAVED_AT = (InputsPushed, NotebookCells, Observation, RunFinished)
#: The event types a transcript does not store.
_NOT_STORED = (
    ev.KernelStatus,
    ev.Approval,  # the record keeps what was decided: CodeProposed.original, CodeSkipped
    ev.StepStarted,
    ev.TextDelta,
    ev.ModelRetry,
    ev.CellOutput,
    ev.CellCleared,
    ev.Notice,
)


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat(timespec="seconds")


class Transcript:
    """Builds a notebook from an agent's events; saves it after every step when ``path`` is set.

    Args:
        path: where to autosave (None: keep in memory; call :meth:`save` with a path later).
        autosave: write after every finished step and at the end of each run.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, autosave: bool = True):
        self.path = Path(path) if path is not None else None
        self.autosave = autosave and path is not None
        # The notebook is built when first needed: events wait in the backlog while nbformat
        # loads in the background (see lazy), unless a save needs it.
        self._nb: nbformat.NotebookNode | None = None
        self._backlog: list[ev.AnyEvent] = []
        self._replies: dict[int, str] = {}
        self._reasoning: dict[int, str] = {}
        self._code_cells: dict[int, Any] = {}
        self._originals: dict[int, str] = {}
        self._setup: Any = None
        self._tool_specs: dict[str, dict[str, Any]] = {}
        self._tool_calls: dict[int, list[ToolCalled]] = {}
        #: Per tool, the recorded outcomes of calls made by cells that re-execute, in order.
        self._replay: dict[str, list[dict[str, Any]]] = {}
        #: The last autosave error, if any (the run goes on; the caller decides what to do).
        self.save_error: TranscriptError | None = None

    @property
    def nb(self) -> nbformat.NotebookNode:
        """The notebook as it stands."""
        if self._nb is None:
            nb = nbformat.v4.new_notebook()
            nb.metadata.update(
                {
                    "kernelspec": {
                        "name": "python3",
                        "display_name": "Python 3",
                        "language": "python",
                    },
                    "language_info": {"name": "python", "version": platform.python_version()},
                    "nbagent": {"version": __version__, "runs": []},
                }
            )
            self._nb = nb
            backlog, self._backlog = self._backlog, []
            for event in backlog:
                self._handle(event)
        return self._nb

    @nb.setter
    def nb(self, value: nbformat.NotebookNode) -> None:
        self._nb = value

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, autosave: bool = True) -> Transcript:
        """Continue an existing transcript: new runs are appended to it (and saved there)."""
        nb = read_transcript(path)
        transcript = cls(path, autosave=autosave)
        transcript.nb = nb
        transcript._restore_tools()
        return transcript

    def _restore_tools(self) -> None:
        """Pick up the setup cell, the tools and the replay queues of a loaded notebook."""
        meta = self.nb.metadata.get("nbagent") or {}
        for spec in meta.get("tools") or []:
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                self._tool_specs.setdefault(spec["name"], dict(spec))
        for cell in self.nb.cells:
            info = cell.metadata.get("nbagent") or {}
            if info.get("role") == "setup" and self._setup is None:
                self._setup = cell
            elif info.get("role") == "step" and not set(SKIP_TAGS) & set(
                cell.metadata.get("tags", [])
            ):
                for call in info.get("tool_calls") or []:
                    if isinstance(call, dict) and call.get("name") in self._tool_specs:
                        outcome = {k: call[k] for k in ("result", "error", "display") if k in call}
                        self._replay.setdefault(call["name"], []).append(outcome)

    def tool_replay_source(self) -> str:
        """Source defining stubs that replay the recorded tool results ("" without tools)."""
        return replay_setup(list(self._tool_specs.values()), self._replay)

    # -- the listener ----------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if not isinstance(event, ev.AnyEvent):
            return
        if self._nb is None:
            if isinstance(event, StepStarted):  # load while the model answers
                after_request("nbformat")
            saves = self.autosave and isinstance(event, _SAVED_AT)
            if not (saves or isinstance(event, RunFinished) or lazy_ready("nbformat")):
                # Nothing waits for the import but a save: every finished step is on disk.
                self._backlog.append(event)
                return
            _ = self.nb  # builds the notebook, handles the backlog first
        self._handle(event)

    def _handle(self, event: ev.AnyEvent) -> None:
        if isinstance(event, RunStarted):
            self._run_started(event)
        elif isinstance(event, ModelReplied):
            self._replies[event.step] = event.text
        elif isinstance(event, CodeProposed):
            self._reasoning[event.step] = event.reasoning
            if event.original:
                self._originals[event.step] = event.original
        elif isinstance(event, ToolCalled):
            self._tool_calls.setdefault(event.step, []).append(event)
        elif isinstance(event, PlanMade):
            self.nb.cells.append(
                nbformat.v4.new_markdown_cell(
                    f"**Plan**\n\n{event.text.strip()}",
                    metadata={"nbagent": {"role": "plan", "step": event.step}},
                )
            )
        elif isinstance(event, InputsPushed):
            self.nb.cells.append(
                nbformat.v4.new_code_cell(
                    inputs_cell(event.names, event.payload),
                    metadata={"nbagent": {"role": "inputs", "names": list(event.names)}},
                )
            )
            self._autosave()
        elif isinstance(event, NotebookCells):
            self._notebook_cells(event)
        elif isinstance(event, CodeSkipped):
            self._code_cell(event.step, event.code, status="skipped", note=event.reason)
        elif isinstance(event, CellFinished):
            self._cell_finished(event)
        elif isinstance(event, Observation):
            cell = self._code_cells.get(event.step)
            if cell is not None:
                cell.metadata["nbagent"]["observation"] = event.text
            else:  # a correction that answered a reply without runnable code
                self._reply_only(event.step, event.text)
            self._autosave()
        elif isinstance(event, RunFinished):
            self._run_finished(event)
            self._autosave()
        elif isinstance(event, _NOT_STORED):
            pass  # live progress: the finished cell and the notices carry what is kept
        else:
            ev.unhandled(event)

    # -- building ------------------------------------------------------------------------------

    def _run_started(self, event: RunStarted) -> None:
        meta = self.nb.metadata["nbagent"]
        meta["runs"].append(
            {"run_id": event.run_id, "task": event.task, "started": _iso(event.time)}
        )
        if event.workdir:
            meta["workdir"] = event.workdir
        spec = self.nb.metadata.get("kernelspec") or {}
        if event.kernel and spec.get("name") != event.kernel:  # looked up once, not every run
            # so that Jupyter, replay and --resume pick the same environment
            self.nb.metadata["kernelspec"] = _kernelspec(event.kernel)
        meta.setdefault("model", event.model)
        meta.setdefault("task", event.task)
        meta.setdefault("started", _iso(event.time))
        heading = "Task" if event.turn == 1 else f"Follow-up {event.turn - 1}"
        self.nb.cells.append(
            nbformat.v4.new_markdown_cell(
                f"## {heading}\n\n{_quote(event.task)}\n\n*nbagent {__version__} · {event.model}*",
                metadata={"nbagent": {"role": "task", "turn": event.turn, "prompt": event.prompt}},
            )
        )
        for spec in event.tools:
            self._tool_specs.setdefault(spec["name"], dict(spec))
        if self._tool_specs:
            meta["tools"] = list(self._tool_specs.values())
        if self._setup is None:
            self._setup = nbformat.v4.new_code_cell("", metadata={"nbagent": {"role": "setup"}})
            self.nb.cells.append(self._setup)
        self._refresh_setup()

    def _notebook_cells(self, event: NotebookCells) -> None:
        """The agent worked in the notebook's own kernel: start with the user's cells (so the
        transcript re-executes on its own) and say which variables came from the notebook."""
        names = ", ".join(event.names) or "none"
        gap = "" if event.complete else " Earlier cells were left out: define those yourself."
        self.nb.cells.append(
            nbformat.v4.new_markdown_cell(
                "**From the notebook.** The agent worked in the notebook's own kernel. Its "
                f"variables then: {names}. The cells the user ran before follow.{gap}",
                metadata={"nbagent": {"role": "notebook", "names": list(event.names)}},
            )
        )
        for source in event.sources:
            self.nb.cells.append(
                nbformat.v4.new_code_cell(source, metadata={"nbagent": {"role": "notebook"}})
            )
        self._autosave()

    def _refresh_setup(self) -> None:
        specs = list(self._tool_specs.values())
        self._setup.source = SETUP_CELL + replay_setup(specs, self._replay)

    def _markdown_reasoning(self, step: int, text: str) -> None:
        if text.strip():
            self.nb.cells.append(
                nbformat.v4.new_markdown_cell(
                    _bounded(text.strip(), DISPLAY_LIMIT, "the step's metadata `reply`"),
                    metadata={"nbagent": {"role": "reasoning", "step": step}},
                )
            )

    def _code_cell(self, step: int, code: str, *, status: str, note: str = "") -> Any:
        self._markdown_reasoning(step, self._reasoning.pop(step, ""))
        meta: dict[str, Any] = {"role": "step", "step": step, "status": status}
        if step in self._replies:
            meta["reply"] = self._replies.pop(step)
        if note:
            meta["note"] = note
        if step in self._originals:  # an approver edited the model's code; this is what ran
            meta["edited"] = True
            meta["proposed_code"] = self._originals.pop(step)
        cell = nbformat.v4.new_code_cell(code, metadata={"nbagent": meta})
        if status == "skipped":
            cell.metadata["tags"] = list(SKIP_TAGS)
            meta["skip_reason"] = f"not run by the agent: {note}"
        self.nb.cells.append(cell)
        self._code_cells[step] = cell
        return cell

    def _cell_finished(self, event: CellFinished) -> None:
        cell = self._code_cell(event.step, event.code, status=event.status, note=event.note)
        cell.execution_count = event.execution_count
        cell.outputs = [_clean_output(o) for o in event.outputs]
        meta = cell.metadata["nbagent"]
        meta["duration"] = round(event.duration, 3)
        if event.state_lost:
            meta["state_lost"] = True
        if event.new_names or event.changed_names:
            meta["names"] = {"new": list(event.new_names), "changed": list(event.changed_names)}
        if event.status == "error":
            cell.metadata["tags"] = ["raises-exception"]
        elif event.status in ("timeout", "died"):
            cell.metadata["tags"] = list(SKIP_TAGS)
            meta["skip_reason"] = event.note or event.status
        self._record_tools(event.step, replayed=event.status in ("ok", "error"))

    def _record_tools(self, step: int, *, replayed: bool) -> None:
        """Keep the step's tool calls in its cell's metadata and, when the cell re-executes,
        in the setup cell's replay queues."""
        calls = self._tool_calls.pop(step, [])
        if not calls:
            return
        meta = self._code_cells[step].metadata["nbagent"]
        meta["tool_calls"] = [_call_record(c) for c in calls]
        if not replayed:
            return
        for call in calls:
            if call.name in self._tool_specs:
                outcome: dict[str, Any] = (
                    {"error": call.error} if call.error is not None else {"result": call.result}
                )
                if call.display:
                    outcome["display"] = list(call.display)
                self._replay.setdefault(call.name, []).append(outcome)
        self._refresh_setup()

    def _reply_only(self, step: int, observation: str) -> None:
        reply = self._replies.pop(step, "")
        self.nb.cells.append(
            nbformat.v4.new_markdown_cell(
                reply.strip() or "*(empty reply)*",
                metadata={
                    "nbagent": {
                        "role": "reply",
                        "step": step,
                        "reply": reply,
                        "observation": observation,
                    }
                },
            )
        )

    def _run_finished(self, event: RunFinished) -> None:
        meta = self.nb.metadata["nbagent"]
        steps = meta.get("steps", 0) + event.steps
        usage = dict(meta.get("usage") or {})
        for key, value in event.usage.to_dict().items():
            usage[key] = usage.get(key, 0) + value
        meta.update(
            {
                "answer": event.answer,
                "status": event.status,
                "reason": event.reason,
                "steps": steps,
                "usage": usage,
                "ended": _iso(event.time),
            }
        )
        preview = None if event.answer is None else _bounded(event.answer, RUN_ANSWER_PREVIEW, "")
        meta["runs"][-1].update({"status": event.status, "answer": preview, "steps": event.steps})
        # A reply without code that ended the run is the answer: keep its text as reasoning.
        answer_meta: dict[str, Any] = {"role": "answer", "status": event.status}
        leftover = [s for s in self._replies if s not in self._code_cells]
        for step in leftover:
            if event.status == "answered" and event.answer is not None:
                answer_meta.update(step=step, reply=self._replies.pop(step))
            else:
                self._reply_only(step, "")
        if event.status == "answered":
            shown = _bounded(str(event.answer), DISPLAY_LIMIT, "`metadata.nbagent.answer`")
            body = f"## Answer\n\n{shown}"
        else:
            body = f"## Run ended: {event.status}\n\n{_quote(event.reason)}"
        self.nb.cells.append(nbformat.v4.new_markdown_cell(body, metadata={"nbagent": answer_meta}))

    # -- saving --------------------------------------------------------------------------------

    def to_notebook(self) -> nbformat.NotebookNode:
        """A validated deep copy of the notebook as it stands."""
        nb = copy.deepcopy(self.nb)
        try:
            nbformat.validate(nb)
        except nbformat.ValidationError as exc:
            raise TranscriptError(f"transcript is not a valid notebook: {exc.message}") from None
        return nb

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the notebook atomically to ``path`` (default: the autosave path)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise TranscriptError("no path to save the transcript to")
        own_file(target)  # not news to the model in the next step's file diff
        atomic_write_notebook(self.to_notebook(), target)
        return target

    def _autosave(self) -> None:
        if not self.autosave:
            return
        try:
            self.save()
            self.save_error = None
        except TranscriptError as exc:
            self.save_error = exc
            raise


def atomic_write_notebook(nb: nbformat.NotebookNode, path: str | os.PathLike[str]) -> None:
    """Write ``nb`` to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    try:
        data = nbformat.writes(nb).encode("utf-8")
    except UnicodeEncodeError:  # a surrogate some text edge let through: never a traceback
        data = safe_text(nbformat.writes(nb)).encode("utf-8")
    except Exception as exc:  # nbformat/json refusing a value
        raise TranscriptError(f"could not save transcript to {target}: {exc}") from None
    parent = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        tmp = None
        with contextlib.suppress(OSError):
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TranscriptError(f"could not save transcript to {target}: {reason}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_output_path(path: str | os.PathLike[str], *, option: str = "-o") -> Path:
    """Check, before a run spends anything, that a transcript can be written to ``path``: not
    a directory, its folder exists and takes a new file, and whatever is there already is a
    notebook (anything else is never replaced). Raises :class:`TranscriptError`."""
    target = Path(path)
    where = f"{option} {target}"
    if target.is_dir():
        raise TranscriptError(f"{where}: is a directory; give a file, e.g. {target / 'run.ipynb'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise TranscriptError(f"{where}: folder {parent} does not exist")
    if target.exists() and not _looks_like_notebook(target):
        raise TranscriptError(
            f"{where}: exists and is not a notebook; not replacing it (remove it or choose "
            "another name)"
        )
    try:  # the real test: os.access() says yes to root on a read-only mount, for one
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TranscriptError(f"{where}: cannot write in {parent}: {exc.strerror or exc}") from None
    return target


def _looks_like_notebook(path: Path) -> bool:
    """An empty file or a JSON object that starts like a notebook (nbformat writes "cells"
    first); read no more than the head, however large the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return not head or (head.startswith(b"{") and (b'"cells"' in head or b'"nbformat"' in head))


def read_transcript(
    path: str | os.PathLike[str], *, require_nbagent: bool = True
) -> nbformat.NotebookNode:
    """Read and validate a notebook; with ``require_nbagent``, it must be an nbagent transcript."""
    target = Path(path)
    try:
        nb = nbformat.read(target, as_version=4)
    except FileNotFoundError:
        raise TranscriptError(f"no such notebook: {target}") from None
    except IsADirectoryError:
        raise TranscriptError(f"{target} is a directory, not a notebook") from None
    except OSError as exc:
        raise TranscriptError(f"cannot read {target}: {exc.strerror or exc}") from None
    except Exception as exc:  # nbformat raises several types for malformed JSON
        raise TranscriptError(f"{target} is not a readable notebook: {exc}") from None
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        raise TranscriptError(f"{target} is not a valid notebook: {exc.message}") from None
    if require_nbagent and "nbagent" not in nb.metadata:
        raise TranscriptError(f"{target} is a notebook, but not an nbagent transcript")
    return nb


def _clean_output(output: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(output))
    out.pop("transient", None)
    data = out.get("data")
    if isinstance(data, dict):
        for mime in PRIVATE_MIME & data.keys():
            del data[mime]
            out.get("metadata", {}).pop(mime, None)
        answer = data.get(ANSWER_MIME)
        if isinstance(answer, dict) and len(str(answer.get("answer", ""))) > DISPLAY_LIMIT:
            # a third full copy otherwise (metadata.nbagent.answer and the answer cell)
            where = "`metadata.nbagent.answer`"
            data[ANSWER_MIME] = {"answer": _bounded(str(answer["answer"]), DISPLAY_LIMIT, where)}
    return nbformat.from_dict(out)


def _call_record(call: ToolCalled) -> dict[str, Any]:
    record: dict[str, Any] = {"name": call.name, "arguments": call.arguments}
    if call.error is not None:
        record["error"] = call.error
    else:
        record["result"] = call.result
    if call.display:  # shown again when the notebook re-executes without the server
        record["display"] = list(call.display)
    record["duration"] = round(call.duration, 3)
    return record


def _bounded(text: str, limit: int, where: str) -> str:
    """``text`` cut to ``limit`` characters, saying how much there was and where it all is."""
    if len(text) <= limit:
        return text
    rest = f"; all of it is in {where}" if where else ""
    return f"{text[:limit]}\n\n*[… {len(text):,} characters in all{rest}]*"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().split("\n"))


def _kernelspec(name: str) -> dict[str, str]:
    """A notebook's ``kernelspec`` metadata for the kernelspec ``name`` (its display name when it
    is installed here; a gateway's may not be)."""
    from nbagent.kernel.specs import find_kernelspec

    try:
        display = str(find_kernelspec(name).display_name or name)
    except ConfigError:
        display = name
    return {"name": name, "display_name": display, "language": "python"}


def recorded_kernel(nb: nbformat.NotebookNode) -> str | None:
    """The kernelspec a transcript's code ran in, when it is not the default (``python3``)."""
    spec = nb.metadata.get("kernelspec")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name.strip() and name != "python3" else None
