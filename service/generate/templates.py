"""Prompt templates: prompts/templates.toml (data, not code), optionally overlaid by a user's
templates file (``generate --templates FILE``, written by ``selfinstruct templates import``).

Two layouts:

- ``layout = "project"``: the project's own headers; the stage modules lay out the
  examples (a blank line after the header, worked examples built from the seeds);
- ``layout = "reference"``: the reference code's prompts, byte for byte: the list header
  is followed directly by the numbered items, and each of the classify and instance
  prompts is a fixed few-shot prefix the task is appended to (``prefix + " " + task +
  "\\n"``, then the classify question). Those prefixes are the user's: imported from a
  checkout of the reference, never shipped with the project.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from prompts import PROMPTS_DIR
from service.errors import ConfigError

TEMPLATES_FILE = PROMPTS_DIR / "templates.toml"
LAYOUTS = ("project", "reference")
MAX_TEMPLATES_BYTES = 4 * 1024 * 1024

# TOML [section] key -> Templates field
_KEYS: dict[tuple[str, str], str] = {
    ("instructions", "header"): "instructions_header",
    ("instructions", "classification_header"): "instructions_classification_header",
    ("instructions", "chat_system"): "instructions_chat_system",
    ("classify", "header"): "classify_header",
    ("classify", "question"): "classify_question",
    ("classify", "chat_system"): "classify_chat_system",
    ("classify", "prefix"): "classify_prefix",
    ("instances", "input_first_header"): "instances_input_first_header",
    ("instances", "output_first_header"): "instances_output_first_header",
    ("instances", "chat_system"): "instances_chat_system",
    ("instances", "input_first_prefix"): "instances_input_first_prefix",
    ("instances", "output_first_prefix"): "instances_output_first_prefix",
    ("alpaca", "prompt"): "alpaca_prompt",
    ("alpaca", "chat_system"): "alpaca_chat_system",
}


@dataclass(frozen=True)
class Templates:
    instructions_header: str
    instructions_classification_header: str
    instructions_chat_system: str
    classify_header: str
    classify_question: str
    classify_chat_system: str
    instances_input_first_header: str
    instances_output_first_header: str
    instances_chat_system: str
    alpaca_prompt: str = ""
    alpaca_chat_system: str = ""
    layout: str = "project"
    source: str = "project"
    # reference layout only: the few-shot prefixes the task is appended to
    classify_prefix: str | None = None
    instances_input_first_prefix: str | None = None
    instances_output_first_prefix: str | None = None


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_TEMPLATES_BYTES:
            raise ConfigError(f"prompt templates {path}: larger than {MAX_TEMPLATES_BYTES} bytes")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt templates {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt templates {path}: unreadable ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"prompt templates {path}: invalid TOML ({exc})") from None


def _values(data: dict[str, Any], path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key in ("layout", "source"):
            if not isinstance(raw, str) or (key == "layout" and raw not in LAYOUTS):
                raise ConfigError(f"prompt templates {path}: key '{key}': expected one of {', '.join(LAYOUTS)}")
            values[key] = raw
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"prompt templates {path}: key '{key}': unknown key or not a table")
        for sub, text in raw.items():
            name = _KEYS.get((key, sub))
            if name is None:
                raise ConfigError(f"prompt templates {path}: key '{key}.{sub}': unknown key")
            if not isinstance(text, str):
                raise ConfigError(f"prompt templates {path}: key '{key}.{sub}': expected a string")
            values[name] = text
    return values


@lru_cache(maxsize=8)
def load_templates(path: Path = TEMPLATES_FILE) -> Templates:
    """The project's templates, overlaid with ``path``'s keys when it is another file."""
    base = _values(_read(TEMPLATES_FILE), TEMPLATES_FILE)
    missing = sorted(n for n in _REQUIRED if n not in base)
    if missing:
        raise ConfigError(f"prompt templates {TEMPLATES_FILE}: missing {', '.join(missing)}")
    if path != TEMPLATES_FILE:
        overlay = _values(_read(path), path)
        base.update(overlay)
        if base.get("layout") == "reference":
            needed = ("classify_prefix", "instances_input_first_prefix", "instances_output_first_prefix")
            absent = [n for n in needed if not base.get(n)]
            if absent:
                raise ConfigError(
                    f"prompt templates {path}: layout 'reference' needs "
                    + ", ".join(_toml_name(n) for n in absent)
                )
    return Templates(**base)


_REQUIRED = {f.name for f in fields(Templates)} - {
    "alpaca_prompt", "alpaca_chat_system", "layout", "source", "classify_prefix",
    "instances_input_first_prefix", "instances_output_first_prefix",
}


def _toml_name(field_name: str) -> str:
    for (section, key), name in _KEYS.items():
        if name == field_name:
            return f"{section}.{key}"
    return field_name


def toml_string(text: str) -> str:
    """A TOML basic string for any text (control characters escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_templates(values: dict[tuple[str, str], str], *, layout: str, source: str, note: str) -> str:
    """A templates file (TOML) with the given ``(section, key) -> text`` entries."""
    lines = [f"# {line}" for line in note.splitlines()]
    lines += [f"layout = {toml_string(layout)}", f"source = {toml_string(source)}"]
    for section in dict.fromkeys(s for s, _ in values):
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_string(text)}" for (s, key), text in values.items() if s == section]
    return "\n".join(lines) + "\n"
