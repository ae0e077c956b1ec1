"""Every default of the LLM client in one place (service.config reads its own from here)."""

from __future__ import annotations

# Token estimation (hosted APIs count prompt tokens + max_tokens * n at admission).
CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4

# Retries
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 30.0
CONTEXT_SHRINK_FACTOR = 0.8
MAX_RETRY_AFTER_S = 120.0  # a server asking for more is capped (and the deadline still rules)

# Timeouts
DEFAULT_REQUEST_TIMEOUT_S = 120.0  # generous: long instruction lists on slow endpoints
DEFAULT_CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0  # idle pooled connections are closed after this (aiohttp's default)
DEFAULT_DEADLINE_S = 600.0

# Limiter
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_BURST_SECONDS = 1.0  # bucket capacity = this many seconds of rate (smooth start)
MIN_BURST_REQUESTS = 1.0
RATE_DECREASE_FACTOR = 0.5  # multiplicative decrease on 429
MIN_RATE_FACTOR = 0.1
RATE_RECOVERY_PER_S = 0.02  # additive increase of the rate factor per second (0.5 -> 1 in 25 s)
DECREASE_COOLDOWN_S = 1.0  # a burst of 429s from requests already in flight cuts the rate once

# Messages
MAX_ERROR_MESSAGE_CHARS = 300
USER_AGENT = "selfinstruct-llm/0.1"
