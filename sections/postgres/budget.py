"""The rate budget every worker shares, kept in one row per provider budget (``rate_budgets``).

Generic cell rate algorithm: the row holds, per budget (tokens, requests), the theoretical arrival
time (TAT) of the next unit. A reservation of ``t`` tokens moves the TAT by ``t / rate`` from
max(TAT, now) and may go once the TAT is within one minute's burst of now: the provider's own
bucket holds a minute's worth, so a full bucket lets a burst go and the rest follows at the rate.
Every reservation is one statement (an upsert, so the row makes itself), so workers on any machine
draw from one schedule in order and none has to learn the others' traffic from 429s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sections.postgres.database import Database, unreachable

__all__ = ["BURST_S", "PostgresBudget", "budget_key"]

BURST_S = 60.0  # a minute's worth may go at once, as the provider's bucket allows
UNREACHABLE_WAIT_S = 0.5  # the longest a request waits for a connection to reserve its place

_RESERVE = f"""
insert into rate_budgets as b (key, tokens_per_minute, requests_per_minute, token_tat, request_tat)
select %(key)s, p.tpm, p.rpm,
       now() + make_interval(secs => coalesce(p.tokens * 60.0 / p.tpm, 0)),
       now() + make_interval(secs => coalesce(60.0 / p.rpm, 0))
  from (select %(tokens)s::float8 as tokens, %(tpm)s::float8 as tpm, %(rpm)s::float8 as rpm) p
on conflict (key) do update set
    tokens_per_minute = excluded.tokens_per_minute,
    requests_per_minute = excluded.requests_per_minute,
    token_tat = case when excluded.tokens_per_minute is null then b.token_tat
                     else greatest(b.token_tat, now()) + (excluded.token_tat - now()) end,
    request_tat = case when excluded.requests_per_minute is null then b.request_tat
                       else greatest(b.request_tat, now()) + (excluded.request_tat - now()) end,
    updated_at = now()
returning greatest(0,
    case when b.tokens_per_minute is null then 0 else extract(epoch from b.token_tat - now()) - {BURST_S} end,
    case when b.requests_per_minute is null then 0 else extract(epoch from b.request_tat - now()) - {BURST_S} end)::float8
"""
_PAUSE = f"""
update rate_budgets b set
    token_tat = case when p.tpm is null then b.token_tat
                     else greatest(b.token_tat, now() + make_interval(secs => p.seconds + {BURST_S} - p.tokens * 60.0 / p.tpm))
                end,
    request_tat = case when p.rpm is null then b.request_tat
                       else greatest(b.request_tat, now() + make_interval(secs => p.seconds + {BURST_S} - 60.0 / p.rpm)) end,
    updated_at = now()
  from (select %(seconds)s::float8 as seconds, %(tokens)s::float8 as tokens, %(tpm)s::float8 as tpm,
               %(rpm)s::float8 as rpm) p
 where b.key = %(key)s
"""


def budget_key(model: str, base_url: str | None) -> str:
    """Which budget a service draws on: its model at its server (host and port, never credentials)."""
    if not base_url:
        return f"{model}@api.openai.com"
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    return f"{model}@{host}" + (f":{parts.port}" if parts.port else "")


@dataclass(slots=True)
class PostgresBudget:
    database: Database
    key: str

    def _params(self, tokens: int, tpm: float | None, rpm: float | None) -> dict[str, Any]:
        return {"key": self.key, "tokens": float(tokens), "tpm": tpm, "rpm": rpm}

    def reserve(self, tokens: int, tpm: float | None, rpm: float | None) -> float:
        """The seconds to wait before sending; 0 when the database cannot be reached (the request
        then goes on this process's own pacing: a missed reservation costs pacing, never the run,
        whose own writes wait the outage out)."""
        try:
            with self.database.connection(UNREACHABLE_WAIT_S) as conn:
                row = conn.execute(_RESERVE, self._params(tokens, tpm, rpm)).fetchone()
        except Exception as error:
            if not unreachable(error):
                raise
            return 0.0
        return float(row[0]) if row else 0.0

    def pause(self, seconds: float, tokens: int, tpm: float | None, rpm: float | None) -> None:
        try:
            with self.database.connection(UNREACHABLE_WAIT_S) as conn:
                conn.execute(_PAUSE, {**self._params(tokens, tpm, rpm), "seconds": float(seconds)})
        except Exception as error:
            if not unreachable(error):
                raise
