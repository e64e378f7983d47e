"""Data files reach the kernel's working directory through the kernel, on both backends."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from nbagent.apps.cli import main
from nbagent.core.errors import ConfigError, TransferError
from nbagent.kernel.session import KernelSession
from nbagent.kernel.upload import DataFile, collect_data, describe_data
from nbagent.loop.agent import Agent
from tests.kernel_fixtures import stream_text
from tests.llm_fixtures import ScriptedServer, scripted_model


def _hashes_code(top: str, single: str) -> str:
    """Kernel code printing the sha256 of every file under ``top``, and of ``single``."""
    return (
        "import hashlib, json, os\nout = {}\n"
        f"for root, dirs, files in os.walk({top!r}):\n"
        "    for name in files:\n"
        "        path = os.path.join(root, name)\n"
        "        out[path] = hashlib.sha256(open(path, 'rb').read()).hexdigest()\n"
        f"out[{single!r}] = hashlib.sha256(open({single!r}, 'rb').read()).hexdigest()\n"
        "print(json.dumps(out))"
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kernel_dir(kernel_backend: str, request: pytest.FixtureRequest, workdir: Path) -> Path:
    """Where the kernel's working directory is, as seen from this (same) machine."""
    if kernel_backend == "gateway":
        return Path(request.getfixturevalue("kernel_gateway").root)
    return workdir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_files_and_directories_arrive_intact(
    make_kernel: Callable[..., KernelSession], tmp_path: Path, workdir: Path
) -> None:
    top = tmp_path / f"dataset-{uuid.uuid4().hex[:8]}"  # unique: gateway kernels share a dir
    (top / "nested" / "deeper").mkdir(parents=True)
    (top / "a.csv").write_text("x,y\n1,2\n")
    (top / "nested" / "deeper" / "big.bin").write_bytes(os.urandom(2_500_000))  # 3 chunks
    (top / ".hidden").write_text("kept too")
    single = tmp_path / f"notes-{uuid.uuid4().hex[:8]}.txt"
    single.write_text("é ü — unicode\n")
    k = make_kernel(cwd=workdir, data=[top, single])
    r = k.execute(_hashes_code(top.name, single.name))
    seen = json.loads(stream_text(r))
    expected = {
        os.path.join(top.name, "a.csv"): _sha(top / "a.csv"),
        os.path.join(top.name, "nested", "deeper", "big.bin"): _sha(
            top / "nested" / "deeper" / "big.bin"
        ),
        os.path.join(top.name, ".hidden"): _sha(top / ".hidden"),
        single.name: _sha(single),
    }
    assert seen == expected, "a file is missing, extra (a temp file left?) or different"
    assert k.execution_count == 1, "uploads are silent: they do not count as cells"


def test_unchanged_files_are_not_sent_again_and_changed_ones_are(
    make_kernel: Callable[..., KernelSession],
    tmp_path: Path,
    workdir: Path,
    kernel_backend: str,
    request: pytest.FixtureRequest,
) -> None:
    keep = tmp_path / f"keep-{uuid.uuid4().hex[:8]}.txt"
    keep.write_text("original")
    spoil = tmp_path / f"spoil-{uuid.uuid4().hex[:8]}.txt"
    spoil.write_text("original")
    k = make_kernel(cwd=workdir, data=[keep, spoil])
    where = _kernel_dir(kernel_backend, request, workdir)
    mtime = (where / keep.name).stat().st_mtime_ns
    (where / spoil.name).write_text("changed in the kernel")
    k.restart()  # the data is checked again after every start
    assert (where / keep.name).stat().st_mtime_ns == mtime, "an unchanged file was rewritten"
    assert (where / spoil.name).read_text() == "original"


def test_a_file_the_kernel_cannot_store_fails_clearly(
    make_kernel: Callable[..., KernelSession],
    tmp_path: Path,
    workdir: Path,
    kernel_backend: str,
    request: pytest.FixtureRequest,
) -> None:
    name = f"blocked-{uuid.uuid4().hex[:8]}"
    source = tmp_path / name
    source.write_text("data")
    (_kernel_dir(kernel_backend, request, workdir) / name).mkdir()  # a directory is in the way
    k = make_kernel(start=False, cwd=workdir, data=[source])
    with pytest.raises(TransferError) as info:
        k.start()
    assert f"uploading {source} failed in the kernel: " in str(info.value)
    assert "Error" in str(info.value) and "\n" not in str(info.value)
    assert not k.is_alive


def test_bad_data_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data path 'no-such-file\.csv' does not exist"):
        collect_data(["no-such-file.csv"], base=tmp_path)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(ConfigError, match=r"is 314,572,800 bytes, over the limit of 209,715,200"):
        collect_data([big])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        collect_data([tmp_path / "empty"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.csv").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.csv").write_text("2")
    with pytest.raises(ConfigError, match=r"would both become 'x\.csv'"):
        collect_data([tmp_path / "a" / "x.csv", tmp_path / "b" / "x.csv"])
    with pytest.raises(ConfigError, match="does not exist"):
        Agent("openai:x", base_url="http://127.0.0.1:9", workdir=tmp_path, data=["nope.csv"])


def test_describe_data_tells_the_model_what_is_there(tmp_path: Path) -> None:
    files = [DataFile(tmp_path / f"f{i}", f"f{i}.csv", 1536 * i) for i in range(25)]
    text = describe_data(files, limit=3)
    assert text == (
        "Files in the working directory: f0.csv (0 bytes), f1.csv (1.5 KB), f2.csv (3.0 KB), "
        "and 22 more."
    )
    assert describe_data([]) == ""


def test_an_agent_gets_its_data_and_is_told_about_it(
    scripted_openai: ScriptedServer, tmp_path: Path, workdir: Path
) -> None:
    data = tmp_path / "penguins.csv"
    data.write_text("species,mass\nAdelie,3750\nGentoo,5000\n")
    code = "import pandas as pd\nfinal_answer(int(pd.read_csv('penguins.csv').mass.sum()))"
    scripted_openai.add(f"```python\n{code}\n```")
    with Agent(scripted_model(scripted_openai), workdir=workdir, data=[data]) as agent:
        result = agent.run("Total mass?")
    assert result.answer == "8750"
    task = scripted_openai.chat_requests[0].messages[1]["content"]
    size = data.stat().st_size
    # A local kernel: the host listing names it, as coming in with the kernel's start.
    assert f"Files in the working directory ({workdir}):" in task
    assert f"  penguins.csv ({size} B, CSV; copied in as the kernel starts)" in task


def test_cli_data_that_does_not_exist_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["run", "--model", "openai:x", "--base-url", "http://127.0.0.1:9", "--data",
                 str(tmp_path / "missing.csv"), "task"])  # fmt: skip
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
