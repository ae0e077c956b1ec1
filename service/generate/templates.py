"""Prompt templates loaded from prompts/templates.toml (data, not code)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prompts import PROMPTS_DIR
from service.errors import ConfigError

TEMPLATES_FILE = PROMPTS_DIR / "templates.toml"


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


@lru_cache(maxsize=4)
def load_templates(path: Path = TEMPLATES_FILE) -> Templates:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        ins, cls, inst = data["instructions"], data["classify"], data["instances"]
        return Templates(
            instructions_header=ins["header"],
            instructions_classification_header=ins["classification_header"],
            instructions_chat_system=ins["chat_system"],
            classify_header=cls["header"],
            classify_question=cls["question"],
            classify_chat_system=cls["chat_system"],
            instances_input_first_header=inst["input_first_header"],
            instances_output_first_header=inst["output_first_header"],
            instances_chat_system=inst["chat_system"],
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"prompt templates {path}: unusable ({exc!r})") from None
