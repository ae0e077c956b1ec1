"""Prompt templates and the project's own seed tasks (data files, loaded by path)."""
