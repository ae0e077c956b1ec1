"""The worker's limits: one place for each default (their ranges: config.RANGES).

Kept free of heavy imports so `selfinstruct serve --help` can show them."""

from __future__ import annotations

DEFAULT_MAX_JOBS = 1  # jobs running at once
DEFAULT_MAX_QUEUED = 100  # jobs waiting; past it POST /v1/jobs gets 429
DEFAULT_MAX_KEPT = 1_000  # ended jobs kept; the oldest beyond it are deleted
DEFAULT_RETENTION_S = 7 * 86_400.0  # an ended job (and its run directory) lives this long
DEFAULT_MAX_SSE_STREAMS = 100  # event streams open at once; past it 503
DEFAULT_MAX_BODY = 64 * 1024  # request body bytes; past it 413
DEFAULT_DRAIN_TIMEOUT_S = 30.0
