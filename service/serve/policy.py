"""What a job submitted over HTTP may do with the worker's resources, and what it is told.

Anyone who can submit a job chooses the URL the worker calls. So:

* **The worker's API key goes only where the operator allowed** (``--allow-endpoint``,
  default: the worker's own configured base URL). A job naming another endpoint brings
  its own ``api_key``; a job that brought its own key never falls back to the worker's
  (after a restart, when the in-memory key is gone, it waits in ``needs_key``).
  ``--restrict-endpoints``: jobs may name no other endpoint at all (the worker then
  sends nothing to an address a job chose).
* **Distributed runs are the operator's**: the Redis URL comes from ``serve --redis``
  only, and a job runs in a distributed run of its own (its job id) unless it names one
  the operator shares (``--allow-run-id``): one job cannot join another's run.
* **Errors a job sees are in its own terms** (:func:`job_error`): no reply body of the
  endpoint, no socket detail, nothing that tells one closed port from another; the
  full text goes to the operator's log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.config import Config, Secret, valid_run_id
from service.errors import (
    BudgetExceeded,
    ConfigError,
    InputError,
    LLMError,
    RunDirError,
    SelfInstructError,
)
from service.secret import safe_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
JOB_RUN_PREFIX = "job-"  # every job id starts so; shared run ids may not


class NeedsKey(ConfigError):
    """The job must bring its own API key (it named an endpoint the worker's key may not
    go to, or it was submitted with a key the worker no longer holds)."""


def endpoint_identity(url: str) -> tuple[str, str, int, str, str]:
    """What makes two base URLs the same endpoint: scheme, host, port, path, query
    (case of scheme and host, a default port and a trailing '/' do not matter;
    credentials are not part of it)."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {safe_url(url)!r} ({exc})") from None
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ConfigError(f"not an http(s) URL with a host: {safe_url(url)!r}")
    return scheme, host, port, parts.path.rstrip("/"), parts.query


def job_endpoints(config: Config) -> set[str]:
    """Every base URL a run of ``config`` sends requests to (the run's and each stage's)."""
    urls = {config.base_url} | {stage.base_url for stage in config.stages.values()}
    return {url for url in urls if url is not None}


@dataclass(frozen=True)
class JobPolicy:
    """The operator's rules for jobs (see the module docstring)."""

    allowed_endpoints: tuple[str, ...] = ()
    shared_run_ids: tuple[str, ...] = ()
    restrict_endpoints: bool = False  # jobs may name only the allowed endpoints at all

    def __post_init__(self) -> None:
        for url in self.allowed_endpoints:
            try:
                endpoint_identity(url)
            except ConfigError as exc:
                raise ConfigError(f"--allow-endpoint: {exc}") from None
        for run_id in self.shared_run_ids:
            if not valid_run_id(run_id):
                raise ConfigError(f"--allow-run-id: expected letters, digits, '-', '_' or "
                                  f"'.' (1-64 chars), got {run_id!r}")
            if run_id.startswith(JOB_RUN_PREFIX):
                raise ConfigError(f"--allow-run-id {run_id}: ids starting with "
                                  f"'{JOB_RUN_PREFIX}' are the jobs' own runs")

    def key_may_go_to(self, url: str) -> bool:
        allowed = {endpoint_identity(u) for u in self.allowed_endpoints}
        return endpoint_identity(url) in allowed

    def apply(self, config: Config, *, own_key: str | None, brought_key: bool,
              run_id: str | None, job_id: str) -> Config:
        """The job's config with the key it may use and the distributed run it joins.

        ``own_key``: the key sent with the job (None after a restart: it is never
        stored). ``brought_key``: the job was submitted with a key of its own.
        ``run_id``: the one the job asked for, if any.
        """
        if self.restrict_endpoints:
            for url in sorted(job_endpoints(config)):
                if not self.key_may_go_to(url):
                    raise ConfigError(f"config key 'base_url' (from request body): this worker "
                                      f"calls only the endpoints its operator allowed "
                                      f"(--allow-endpoint), not {safe_url(url)}")
        if own_key is not None:
            config = dataclasses.replace(config, api_key=Secret(own_key))
        elif brought_key:
            raise NeedsKey("the job's own api_key is kept in memory only and this worker no "
                           "longer has it; send it again (POST /v1/jobs/{id}/resume) or "
                           "cancel the job")
        elif config.api_key is not None:  # the worker's key
            endpoints = job_endpoints(config)
            if not endpoints:
                # The embedded local model needs no key: the worker's stays home.
                config = dataclasses.replace(config, api_key=None)
            for url in sorted(endpoints):
                if not self.key_may_go_to(url):
                    raise NeedsKey(
                        f"config key 'base_url' (from request body): this worker sends its "
                        f"API key only to the endpoints its operator allowed "
                        f"(--allow-endpoint); send the job's own \"api_key\" for "
                        f"{safe_url(url)}"
                    )
        return self._with_run_id(config, run_id, job_id)

    def _with_run_id(self, config: Config, requested: str | None, job_id: str) -> Config:
        if config.redis is None:
            return config
        if requested is None:
            return dataclasses.replace(config, run_id=job_id)  # a distributed run of its own
        if requested not in self.shared_run_ids:
            raise ConfigError(
                f"config key 'run_id' (from request body): {requested!r} is not a run this "
                "worker's operator shares (serve --allow-run-id); leave run_id out and the "
                "job runs as a distributed run of its own"
            )
        return dataclasses.replace(config, run_id=requested)


def job_error(exc: BaseException) -> str:
    """What a job's API view says about the error that ended it: what failed, in the
    job's terms. The endpoint's reply body, connection errors and timeouts (which tell a
    closed port from a silent one) stay in the operator's log."""
    if isinstance(exc, LLMError):
        if getattr(exc, "kind", "") == "client_setup":  # the job's own key or URL, checked
            return safe_url(str(exc))                   # before anything was sent
        cause = getattr(exc, "last", None) or exc
        status = getattr(cause, "status", None)
        if isinstance(status, int) and 400 <= status < 500 and status != 429:
            return (f"the endpoint refused the job's requests (HTTP {status}): check "
                    "base_url, model and api_key; the worker's log has the details")
        return ("the endpoint gave no usable answer (it could not be reached, did not "
                "answer in time, or answered with errors); the worker's log has the details")
    if isinstance(exc, ConfigError | InputError | RunDirError | BudgetExceeded):
        return safe_url(str(exc))  # our own words about the job's settings, files, budget
    if isinstance(exc, SelfInstructError):
        return "the job stopped on an error in the worker; the worker's log has the details"
    return "the job stopped on an internal error; the worker's log has the details"
