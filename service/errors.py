"""The project's exception hierarchy. Everything the library raises on purpose derives
from :class:`SelfInstructError`; the CLI prints its message and exits with ``exit_code``.

    SelfInstructError
    ├── ConfigError          bad configuration value (names the key and value)
    ├── InputError           bad input file (names file, line and field)
    ├── RunDirError          run directory problems (locked, corrupt, mismatched)
    ├── LLMError             see service.llm.errors for the client's own subclasses
    └── BudgetExceeded       a token or cost cap was reached
"""

from __future__ import annotations


class SelfInstructError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code: int = 1


class ConfigError(SelfInstructError):
    """A configuration key has a bad value; the message names the key and the value."""

    exit_code = 2


class InputError(SelfInstructError):
    """An input file is malformed; the message names the file, the line and the field."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = path
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")


class RunDirError(SelfInstructError):
    """The run directory cannot be used (locked by another process, corrupt, ...)."""


class LLMError(SelfInstructError):
    """Base of the LLM client's errors (subclasses live in service.llm.errors)."""


class BudgetExceeded(SelfInstructError):
    """A configured token or cost budget has been reached; no new calls are made."""
