"""Judging a model the paper's way: run it over an evaluation set, compare models, rate."""
