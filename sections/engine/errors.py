"""The failure kinds the engine tells apart, because each one is handled differently.

A provider adapter turns whatever its client raised into one of these; the dispatcher decides
from the kind alone whether to wait, retry, split the request, fail its inputs or stop the run.
"""
from __future__ import annotations


class ProviderError(Exception):
    """Base of every classified provider failure; the message is safe to show (no secrets)."""


class RateLimited(ProviderError):
    """429 rate_limit_exceeded: wait and retry; never counted against the inputs."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(ProviderError):
    """5xx, timeouts, dropped connections, replies that do not add up: retry, then split."""


class RequestRejected(ProviderError):
    """400-class rejection of the whole request: never resend unchanged; split to isolate."""


class ProviderFatalError(RuntimeError, ProviderError):
    """Quota exhausted, bad key, no permission, unknown model: the run stops; what is done is kept."""


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (the service's ``stop_requested``; the command sets it on Ctrl-C or
    SIGTERM): nothing new was sent, the replies that arrived in time were delivered, and the inputs
    never answered have no outcome, so a rerun picks them up. A KeyboardInterrupt, so that code which
    stops on Ctrl-C stops on this too, and no ``except Exception`` swallows it."""

    def __init__(self, message: str = "", abandoned_inputs: int = 0):
        super().__init__(message)
        # inputs of the requests still in flight when the grace ran out: sent, so billed, not kept
        self.abandoned_inputs = abandoned_inputs
