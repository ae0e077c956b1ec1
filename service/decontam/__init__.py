"""Decontamination: n-gram overlap between generated data and evaluation sets."""
