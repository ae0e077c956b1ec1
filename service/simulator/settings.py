"""Settings of the simulated endpoint (frozen; validated)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_RECORDED = 100_000  # requests a recording simulator keeps (bounded memory)
MAX_HANG_S = 30.0  # a hang outlasts any sane client timeout but never holds a handler forever
MAX_CAPACITY = 100_000
MAX_BATCH_SLOWDOWN = 100.0
MAX_QUEUE_LIMIT = 1_000_000


@dataclass(frozen=True)
class SimSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see SimulatedServer.base_url)
    rpm: float | None = None
    tpm: float | None = None
    burst_seconds: float = 2.0  # bucket capacity in seconds of rate (hosted APIs allow bursts)
    latency_ms: float = 200.0
    jitter: float = 0.5  # latency * uniform(1 - jitter, 1 + jitter): avoids synchronised waves
    error_rate: float = 0.0  # 500 / 503
    reset_rate: float = 0.0  # connection closed abruptly (RST)
    garbage_rate: float = 0.0  # 200 with a body that is not JSON
    hang_rate: float = 0.0  # no answer for hang_seconds
    truncate_rate: float = 0.0  # finish_reason "length" with the text cut
    duplicate_rate: float = 0.0  # near-duplicate list items
    bad_item_rate: float = 0.0  # list items the filters must drop
    hang_seconds: float = MAX_HANG_S
    context_tokens: int = 16384  # prompt + max_tokens above this -> 400 context_length_exceeded
    model: str = "sim-model"
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    seed: int = 0
    # A self-hosted server (service.simulator.capacity): at most ``capacity`` requests
    # served together, each slower as the batch fills, the rest queued FIFO; past
    # ``queue_limit`` queued, 503. None: unlimited (every request served at once).
    capacity: int | None = None
    batch_slowdown: float = 0.5  # a full batch is this much slower than a batch of one
    queue_limit: int | None = None
    # False: 429s carry Retry-After only, no x-ratelimit-* headers on any response
    ratelimit_headers: bool = True
    # Keep the last this-many requests' prompts, max_tokens and stop (SimulatedServer.received):
    # tests check what a client sent byte for byte. 0: keep none.
    record_requests: int = 0

    def __post_init__(self) -> None:
        rates = ("error_rate", "reset_rate", "garbage_rate", "hang_rate", "truncate_rate",
                 "duplicate_rate", "bad_item_rate", "jitter")
        for name in rates:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1 (got {value!r})")
        faults = self.error_rate + self.reset_rate + self.garbage_rate + self.hang_rate + self.truncate_rate
        if faults > 1.0:
            raise ValueError(f"fault rates add up to {faults:.3f} > 1")
        if self.duplicate_rate + self.bad_item_rate > 1.0:
            raise ValueError("duplicate_rate + bad_item_rate must be <= 1")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (got {value!r})")
        if not 0 <= self.record_requests <= MAX_RECORDED:
            raise ValueError(f"record_requests must be within 0..{MAX_RECORDED} (got {self.record_requests!r})")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0 (got {self.latency_ms!r})")
        if self.capacity is not None and not 1 <= self.capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be within 1..{MAX_CAPACITY} (got {self.capacity!r})")
        if not 0 <= self.batch_slowdown <= MAX_BATCH_SLOWDOWN:
            raise ValueError(f"batch_slowdown must be within 0..{MAX_BATCH_SLOWDOWN:g} "
                             f"(got {self.batch_slowdown!r})")
        if self.queue_limit is not None and not 0 <= self.queue_limit <= MAX_QUEUE_LIMIT:
            raise ValueError(f"queue_limit must be within 0..{MAX_QUEUE_LIMIT} "
                             f"(got {self.queue_limit!r})")
        if not 0 < self.hang_seconds <= MAX_HANG_S:
            raise ValueError(f"hang_seconds must be within (0, {MAX_HANG_S}] (got {self.hang_seconds!r})")
