"""Edges a user meets outside the happy path: file permissions, stopping `auto-evol ui`, bad flags."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


# 1. Final files get the permissions the umask gives (as journals, opened plainly, do), not mkstemp's 0600.

def _with_umask(mask: int, fn):
    old = os.umask(mask)
    try:
        return fn()
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, mask, expected):
    from auto_evol.storage.checkpoint import Journal, atomic_write

    def write():
        with atomic_write(tmp_path / "out.jsonl") as fh:
            fh.write("{}\n")
        with atomic_write(tmp_path / "out.bin", mode="wb") as fh:
            fh.write(b"x")
        with atomic_write(tmp_path / "by-name.txt", mode=None) as tmp:  # the caller writes by name (parquet)
            tmp.write_text("x")
        journal = Journal(tmp_path / "journal.jsonl")
        journal._fh.close()

    _with_umask(mask, write)
    assert (tmp_path / "out.jsonl").read_text() == "{}\n"
    for name in ("out.jsonl", "out.bin", "by-name.txt", "journal.jsonl"):
        assert oct(_mode(tmp_path / name)) == oct(expected), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_atomic_write_over_an_existing_file_and_a_failed_write(tmp_path):
    from auto_evol.storage.checkpoint import atomic_write

    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1

    def write():
        with atomic_write(target) as fh:
            fh.write("new\n")

    _with_umask(0o022, write)
    assert target.read_text() == "new\n" and _mode(target) == 0o644


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_methods_follow_the_umask(tmp_path, mask, expected):
    from auto_evol.algorithm import method

    m = method.Method(name="mine", text="Rewrite this to be harder: {instruction}\n", parent="e0")
    path = _with_umask(mask, lambda: method.save(m, tmp_path / "methods"))
    assert path.exists() and oct(_mode(path)) == oct(expected)
    assert method.load(str(path)).text == m.text
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fmt, name", [("jsonl", "out.jsonl"), ("openai", "out.jsonl"), ("parquet", "out.parquet")])
def test_written_datasets_follow_the_umask(tmp_path, fmt, name):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    from auto_evol.storage import output

    records = [{"instruction": "Say hi.", "input": "", "output": "hi", "round": 1}]
    count = _with_umask(0o022, lambda: output.write(records, tmp_path / name, fmt))
    assert count == 1
    written = sorted(p.name for p in tmp_path.iterdir())
    assert name in written
    for file in written:
        assert oct(_mode(tmp_path / file)) == oct(0o644), file


# 2. `auto-evol ui` stopped by SIGTERM (a supervisor, `kill`) or SIGINT leaves no server or worker behind.

def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, read from /proc."""
    from auto_evol.tracking.process_group import processes

    return {pid: (int(fields[1]), fields[0], fields[19]) for pid, fields in processes().items()}


def _descendants(root: int) -> dict[int, str]:
    """The processes below ``root``, each with its start time (so a reused pid is not taken for it)."""
    table = _proc_table()
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def _still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` still there (a zombie nobody reaped has ended: it holds nothing)."""
    table = _proc_table()
    return [pid for pid, started in processes.items()
            if pid in table and table[pid][2] == started and table[pid][1] not in ("Z", "X")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_stopped_by_a_signal_leaves_nothing_running(tmp_path, sig):
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-c", "from auto_evol.tracking.store import client; client().search_experiments()"],
                   cwd=tmp_path, env=env, check=True, timeout=120, capture_output=True)
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    port = _free_port()
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "auto_evol", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tree: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tree = _descendants(proc.pid)
                    pytest.skip(f"mlflow server never answered: {(tmp_path / 'ui.log').read_text()[-1500:]}")
                time.sleep(0.3)
        time.sleep(1)  # let the server start all its workers before the tree is taken
        tree = _descendants(proc.pid)
        assert tree, "mlflow server runs as a child of auto-evol ui"

        os.kill(proc.pid, sig)  # the auto-evol process only, as `kill PID` or a supervisor does
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"auto-evol ui still running 15 s after {sig.name}")
        deadline = time.monotonic() + 5
        while _still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _still_running(tree)
        assert not left, f"left running after {sig.name}: {[Path(f'/proc/{p}/cmdline').read_bytes()[:120] for p in left]}"
        assert not _port_open(port), f"port {port} still answers after {sig.name}"
        assert code >= 0, f"auto-evol ui died of the signal (exit {code}) instead of stopping cleanly"
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in _still_running(tree):  # whatever a broken stop left behind must not outlive the test
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        log.close()


# 3. A flag that does not parse is one line on stderr, like every other error, exit code 2.

def _cli(args, cwd):
    entry = Path(sys.executable).parent / "auto-evol"
    command = [str(entry)] if entry.exists() else [sys.executable, "-m", "auto_evol"]
    env = {k: v for k, v in os.environ.items() if k not in KEYS and k != "MLFLOW_TRACKING_URI"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["optimize", "--steps", "abc"], ("optimize", "--steps", "integer")),
    (["evolve", "--rounds", "x", "--data", "y"], ("evolve", "--rounds", "integer")),
    (["optimize", "--no-such-flag"], ("optimize", "--no-such-flag")),
    (["evolve"], ("evolve", "--data")),
    (["nosuchcommand"], ("nosuchcommand",)),
    (["methods", "nope"], ("methods", "nope")),
])
def test_a_flag_that_does_not_parse_is_one_line(tmp_path, args, words):
    out = _cli(args, tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: "), out.stderr
    for word in words:
        assert word in lines[0], out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_still_shows_usage(tmp_path):
    for args in (["--help"], ["optimize", "--help"]):
        out = _cli(args, tmp_path)
        assert out.returncode == 0 and "Usage:" in out.stdout and out.stderr == "", out.stderr
    out = _cli([], tmp_path)  # no arguments: the help, not an error line
    assert "Usage:" in out.stdout and "optimize" in out.stdout and "auto-evol: error" not in out.stderr
    assert out.returncode in (0, 2)  # click >= 8.2 exits 2 after the help of a bare group
