"""Is this path a run directory? One answer for every command that reads one."""

from __future__ import annotations

from pathlib import Path

from service.errors import RunDirError
from service.rundir.store import INSTRUCTIONS, RUN_JSON, TASKS

MARKERS = (RUN_JSON, TASKS, INSTRUCTIONS)


def require_run_dir(path: Path) -> Path:
    """The resolved directory, or a RunDirError saying what is wrong with it."""
    root = Path(path).resolve()
    if not root.exists():
        raise RunDirError(f"{path}: no such run directory")
    if not root.is_dir():
        raise RunDirError(f"{path}: not a run directory (it is a file)")
    if not any((root / name).is_file() for name in MARKERS):
        raise RunDirError(
            f"{path}: not a run directory (none of {', '.join(MARKERS)} is there; "
            "`selfinstruct generate --out DIR` makes one)"
        )
    return root
