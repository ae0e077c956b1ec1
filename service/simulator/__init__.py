"""The simulated OpenAI-compatible endpoint (rate limits, latency, faults, deterministic
Self-Instruct-format answers), for tests, benchmarks and ``selfinstruct simulate``.

    from service.simulator import SimSettings, SimulatedServer

    async with SimulatedServer(SimSettings(rpm=600, latency_ms=50, seed=1)) as sim:
        sim.base_url   # "http://127.0.0.1:PORT/v1" (a free port)
        sim.stats()    # counters of what it served; also GET {sim.url}/stats
"""

from service.simulator.answers import AnswerSettings
from service.simulator.ratelimit import ServerLimiter
from service.simulator.server import SimulatedServer, apply_limits
from service.simulator.settings import SimSettings

__all__ = ["AnswerSettings", "ServerLimiter", "SimSettings", "SimulatedServer", "apply_limits"]
