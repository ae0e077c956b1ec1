"""Helpers the test files share: reading JSONL files back, spawning `generate` and
`serve` as real child processes. (Simulators and redis-servers are fixtures in
conftest.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import PYTHON, ROOT

# Variables a child must not inherit from the developer's shell: a real key, a real
# endpoint or a worker token would change what the test exercises.
DROPPED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SELFINSTRUCT_SERVE_TOKEN")


def jsonl(path: Path, *, complete_only: bool = False) -> list[dict[str, Any]]:
    """The file's records ([] when it does not exist). ``complete_only``: a torn last
    line (a kill mid-write) is left out instead of failing the parse."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if complete_only and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs: an exited child waiting to be reaped (a zombie) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def read_http_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request off a raw test server's connection: (head, body), the body
    read by its Content-Length. Raises IncompleteReadError when the client hangs up."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path, none of
    :data:`DROPPED_ENV`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update({"PYTHONPATH": str(ROOT), **extra})
    return env


async def spawn_generate(base_url: str, out: Path, target: int, *extra: str,
                         entry: tuple[str, ...] = ("-m", "service"),
                         env: dict[str, str] | None = None,
                         stdout: int = asyncio.subprocess.PIPE,
                         quiet: bool = True, show: int = 0,
                         ) -> asyncio.subprocess.Process:
    """``selfinstruct generate`` against ``base_url`` (model "sim") as a child process;
    ``entry`` replaces ``-m service`` (e.g. ``-c CODE`` to wrap the CLI)."""
    return await asyncio.create_subprocess_exec(
        PYTHON, *entry, "generate", "--out", str(out), "--target", str(target),
        "--base-url", base_url, "--model", "sim", *(["--quiet"] if quiet else []),
        "--show", str(show), *extra,
        env=env if env is not None else child_env(),
        stdout=stdout, stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 120.0) -> None:
    """Wait for a child to exit; it must exit 0 (its stderr's tail is the message)."""
    _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, stderr.decode()[-3000:]


async def wait_for_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    """Until ``path`` holds ``count`` complete records (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(jsonl(path, complete_only=True)) < count:
        assert loop.time() < deadline, f"{path}: fewer than {count} records after {timeout}s"
        await asyncio.sleep(0.05)


class ServeProcess:
    """``python -m service serve`` on a free port as a child process; its stderr (JSON
    logs) is collected in ``raw`` (lines) and ``logs`` (parsed records)."""

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = env if env is not None else child_env()
        self.raw: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.listening: asyncio.Future[str] | None = None

    async def start(self, *flags: str, timeout: float = 30.0) -> str:
        """Start with ``flags``; returns the URL once the worker logs "listening"."""
        self.process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "service", "serve", "--port", "0", "--state-dir",
            str(self.state_dir), "--drain-timeout", "2", *flags, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self.listening = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self.read())
        return await asyncio.wait_for(self.listening, timeout)

    async def read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode()
            self.raw.append(text)
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            self.logs.append(record)
            if record.get("event") == "listening" and self.listening is not None \
                    and not self.listening.done():
                self.listening.set_result(str(record["url"]))
        if self.listening is not None and not self.listening.done():
            self.listening.set_exception(RuntimeError("".join(self.raw)))

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (the worker drains first)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5)
        return code


def check_admission_log(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run directory's admission invariants: tasks ⊆ admitted; each admitted
    instruction is written, dropped or pending, never two of these; ids and
    instructions unique. Torn last lines are left out. Returns (admitted, tasks)."""
    admitted = jsonl(out / "instructions.jsonl", complete_only=True)
    tasks = jsonl(out / "tasks.jsonl", complete_only=True)
    rejected = jsonl(out / "rejected.jsonl", complete_only=True)
    by_id = {rec["id"]: rec["instruction"] for rec in admitted}
    assert len(by_id) == len(admitted), "an admitted id appears twice"
    assert len(set(by_id.values())) == len(admitted), "an instruction was admitted twice"
    task_ids = [t["id"] for t in tasks]
    assert len(set(task_ids)) == len(task_ids), "a task was written twice"
    assert len({t["instruction"] for t in tasks}) == len(tasks), "an instruction written twice"
    for task in tasks:
        assert by_id.get(task["id"]) == task["instruction"], f"{task['id']} is not as admitted"
    dropped = {r["id"] for r in rejected if r.get("task_level")}
    assert dropped <= set(by_id), "a dropped task was never admitted"
    assert dropped.isdisjoint(task_ids), "a task was both dropped and written"
    # What is left, admitted but neither written nor dropped, is pending: the next run
    # finishes it.
    return admitted, tasks
