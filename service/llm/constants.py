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
# A run ends (EndpointUnavailable) when every call to an endpoint failed for this long.
DEFAULT_GIVE_UP_AFTER_S = 300.0

# Limiter
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_BURST_SECONDS = 1.0  # bucket capacity = this many seconds of rate (smooth start)
MIN_BURST_REQUESTS = 1.0
RATE_DECREASE_FACTOR = 0.5  # multiplicative decrease on 429
MIN_RATE_FACTOR = 0.1
RATE_RECOVERY_PER_S = 0.02  # additive increase of the rate factor per second (0.5 -> 1 in 25 s)
DECREASE_COOLDOWN_S = 1.0  # a burst of 429s from requests already in flight cuts the rate once

# Limits nobody told us (service.llm.adaptive, service.llm.concurrency)
AIMD_DECREASE = 0.9  # on a 429 burst: this share of the rate the server was serving
AIMD_INCREASE_SHARE_PER_S = 0.02  # then + this share of that rate per second
AIMD_MIN_RPM = 6.0
AIMD_WINDOW_S = 2.0  # served rate measured over this window ...
AIMD_MIN_SPAN_S = 1.0  # ... once successes span this long (no cut before)
AIMD_MAX_CUT = 0.5  # one burst cuts the rate to no less than this share of it
MAX_ANNOUNCED_RPM = 100_000_000.0  # a server's announced limits are clamped to these
MAX_ANNOUNCED_TPM = 100_000_000_000.0  # (the upper ends of config.RANGES rpm / tpm)
NO_RATE_IN_FLIGHT = DEFAULT_MAX_IN_FLIGHT  # in flight while no rate is known (none configured)
MAX_ADAPTIVE_IN_FLIGHT = 4096  # upper bound of every sized or adaptive in-flight cap
LITTLE_HEADROOM = 2.0  # Little's law: rate x latency x this ...
LITTLE_EXTRA = 8  # ... + this
CONCURRENCY_INITIAL = 4  # --max-in-flight auto starts here ...
CONCURRENCY_MIN = 2
CONCURRENCY_TOLERANCE = 1.5  # latency / no-load latency up to which nothing queues
CONCURRENCY_MAX_RATIO = 2.5  # above this the limit shrinks whatever throughput says
CONCURRENCY_BACKOFF = 0.5  # on a timeout or 5xx
CONCURRENCY_MIN_SAMPLES = 8  # completions per measurement window, at least ...
CONCURRENCY_WINDOW_LATENCIES = 1.0  # ... and this many mean latencies long
NO_LOAD_HORIZON_S = 120.0  # the no-load latency is the lowest window mean this recent
LATENCY_EWMA_WEIGHT = 0.05  # weight of each new latency sample in the running mean

# Messages
MAX_ERROR_MESSAGE_CHARS = 300
USER_AGENT = "selfinstruct-llm/0.1"

# Responses: the body, and what gzip/deflate inflate it to, are capped (a hostile or broken
# endpoint could otherwise fill memory); a completion of a few thousand tokens is ~50 KB.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
