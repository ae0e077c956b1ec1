"""Prompt templates and the project's own seed tasks (data files, loaded by path)."""

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent
