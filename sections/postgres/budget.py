"""The rate budget every worker shares, kept in one row per provider budget (``rate_budgets``).

Generic cell rate algorithm: the row holds, per budget (tokens, requests), the theoretical arrival
time (TAT) of the next unit. A reservation of ``c`` moves the TAT by ``c / rate`` from max(TAT,
now) and may go once the TAT is within the bucket's burst (``capacity / rate``) of now: a full
bucket lets its capacity go at once and the rest follows at the rate. The capacity is the one the
provider grants (learned from its headers: remaining + rate x reset), not a minute's worth: a
schedule that allowed more than the provider's bucket holds would send 429s, and one that allowed
less would leave the granted burst unspent.

The schedule follows the provider's replies both ways (``observe``): a reply's ``remaining`` is
the provider's level when it admitted that request; the row's running totals say what every
worker reserved after it, so the TAT that reading implies is computed in the statement and
replaces the row's when they differ by more than about one request. That is how a burst the
provider still grants is spent, and how traffic the schedule never saw (requests sent before any
limit was known, another tool on the same key) is accounted for. Every reservation and reading is
one statement (an upsert, so the row makes itself), so workers on any machine draw from one
schedule in order and none has to learn the others' traffic from 429s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg

from sections.postgres.database import Database, unreachable
from sections.rate_budget import Kind, Rate, Rates, Reading, Reservation

__all__ = ["PostgresBudget", "budget_key"]

UNREACHABLE_WAIT_S = 0.5  # the longest a request waits for a connection to reserve its place

# Per budget: its columns in the row and the prefix of its statement parameters.
_COLUMNS = {Kind.TOKENS: ("token", "tokens", "t"), Kind.REQUESTS: ("request", "requests", "r")}


def _seconds(units: str, per_minute: str) -> str:
    return f"make_interval(secs => {units} * 60.0 / {per_minute})"


def _reserve_sql() -> str:
    sets, waits = [], []
    for single, plural, p in _COLUMNS.values():
        pm = f"%({p}_pm)s::float8"
        sets.append(f"""
    {single}_tat = case when {pm} is null then b.{single}_tat
                     else greatest(b.{single}_tat, now()) + {_seconds(f"%({p}_cost)s::float8", pm)} end,
    {plural}_reserved = b.{plural}_reserved + %({p}_cost)s::float8""")
        # The request may go once the bucket holds it (a request bigger than the bucket: once it is full).
        waits.append(f"""case when {pm} is null then 0 else extract(epoch from b.{single}_tat - now())
                - greatest(%({p}_cap)s::float8, %({p}_cost)s::float8) * 60.0 / {pm} end""")
    return f"""
insert into rate_budgets as b (key, tokens_per_minute, requests_per_minute, token_capacity, request_capacity,
                               token_tat, request_tat, tokens_reserved, requests_reserved)
values (%(key)s, %(t_pm)s, %(r_pm)s, %(t_cap)s, %(r_cap)s,
        now() + coalesce({_seconds("%(t_cost)s::float8", "%(t_pm)s::float8")}, interval '0'),
        now() + coalesce({_seconds("%(r_cost)s::float8", "%(r_pm)s::float8")}, interval '0'),
        %(t_cost)s, %(r_cost)s)
on conflict (key) do update set
    tokens_per_minute = excluded.tokens_per_minute, requests_per_minute = excluded.requests_per_minute,
    token_capacity = excluded.token_capacity, request_capacity = excluded.request_capacity,{",".join(sets)},
    updated_at = now()
returning greatest(0, {", ".join(waits)})::float8, b.tokens_reserved, b.requests_reserved
"""


def _observe_sql() -> str:
    inserts, sets = [], []
    for single, plural, p in _COLUMNS.values():
        pm, left, cap = f"%({p}_pm)s::float8", f"%({p}_left)s::float8", f"%({p}_cap)s::float8"
        in_use = _seconds(f"({cap} - {left})", pm)  # the reading's level as time the bucket needs to be full
        after = _seconds(f"coalesce(b.{plural}_reserved - %({p}_reserved)s::float8, 0)", pm)  # reserved since
        sent = "now() - make_interval(secs => %(age)s::float8)"
        inserts.append(f"coalesce(greatest(now(), {sent} + {in_use}), now())")
        # Admitted at the earliest when sent (most refill since: the level as high as it can be) and at
        # the latest now, as the reply arrives (the lowest): lower the schedule only to the first,
        # raise it only to the second, so the reply's unknown way to the provider never adds a 429.
        highest, lowest = f"greatest(now(), {sent} + {in_use} + {after})", f"greatest(now(), now() + {in_use} + {after})"
        current, slack = f"greatest(b.{single}_tat, now())", _seconds(f"%({p}_slack)s::float8", pm)
        sets.append(f"""
    {single}_tat = case when {left} is null then b.{single}_tat
                     when {highest} > {current} + {slack} then {highest}
                     when %({p}_reserved)s::float8 is not null and {lowest} < {current} - {slack} then {lowest}
                     else b.{single}_tat end""")
    return f"""
insert into rate_budgets as b (key, tokens_per_minute, requests_per_minute, token_capacity, request_capacity,
                               token_tat, request_tat)
values (%(key)s, %(t_pm)s, %(r_pm)s, %(t_cap)s, %(r_cap)s, {", ".join(inserts)})
on conflict (key) do update set{",".join(sets)},
    tokens_per_minute = coalesce(excluded.tokens_per_minute, b.tokens_per_minute),
    requests_per_minute = coalesce(excluded.requests_per_minute, b.requests_per_minute),
    token_capacity = coalesce(excluded.token_capacity, b.token_capacity),
    request_capacity = coalesce(excluded.request_capacity, b.request_capacity),
    updated_at = now()
"""


def _pause_sql() -> str:
    sets = []
    for single, _, p in _COLUMNS.values():
        pm = f"%({p}_pm)s::float8"
        # The provider admits ``cost`` in ``seconds``: its level now is cost - rate x seconds.
        sets.append(f"""
    {single}_tat = case when {pm} is null then b.{single}_tat
                     else greatest(b.{single}_tat, now() + make_interval(secs => %(seconds)s::float8)
                                   + {_seconds(f"(%({p}_cap)s::float8 - %({p}_cost)s::float8)", pm)}) end""")
    return f"update rate_budgets b set{','.join(sets)},\n    updated_at = now()\n where b.key = %(key)s"


_RESERVE, _OBSERVE, _PAUSE = _reserve_sql(), _observe_sql(), _pause_sql()
_RATES = """
select tokens_per_minute, token_capacity, requests_per_minute, request_capacity from rate_budgets where key = %(key)s
"""


def budget_key(model: str, base_url: str | None) -> str:
    """Which budget a service draws on: its model at its server (host and port, never credentials)."""
    if not base_url:
        return f"{model}@api.openai.com"
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    return f"{model}@{host}" + (f":{parts.port}" if parts.port else "")


def _rates(rates: Rates, tokens: float) -> dict[str, Any]:
    params: dict[str, Any] = {"t_cost": float(tokens), "r_cost": 1.0}
    for rate, p in ((rates.tokens, "t"), (rates.requests, "r")):
        params[f"{p}_pm"] = rate.per_minute if rate else None
        params[f"{p}_cap"] = rate.capacity if rate else None
    return params


@dataclass(slots=True)
class PostgresBudget:
    database: Database
    key: str

    def reserve(self, tokens: int, rates: Rates) -> Reservation | None:
        """The request's place in the schedule; None when the database cannot be reached (the
        request then goes unscheduled: a missed reservation costs pacing, never the run, whose own
        writes wait the outage out)."""
        try:
            with self.database.connection(UNREACHABLE_WAIT_S) as conn:
                row = conn.execute(_RESERVE, {"key": self.key, **_rates(rates, tokens)}).fetchone()
        except Exception as error:
            if not unreachable(error):
                raise
            return None
        assert row is not None  # an upsert with returning always returns its row
        return Reservation(float(row[0]), float(row[1]), float(row[2]))

    def rates(self) -> Rates:
        with self.database.connection() as conn:
            row = conn.execute(_RATES, {"key": self.key}).fetchone()
        if row is None:
            return Rates(None, None)
        tpm, token_capacity, rpm, request_capacity = row
        return Rates(Rate(tpm, token_capacity or tpm) if tpm else None, Rate(rpm, request_capacity or rpm) if rpm else None)

    def observe(self, readings: list[Reading]) -> None:
        params: dict[str, Any] = {"key": self.key, "age": 0.0}
        for kind, (_, _, p) in _COLUMNS.items():
            reading = next((r for r in readings if r.kind is kind), None)
            params.update({f"{p}_pm": None, f"{p}_cap": None, f"{p}_left": None, f"{p}_reserved": None,
                           f"{p}_slack": 0.0})
            if reading is not None:
                params.update({f"{p}_pm": reading.rate.per_minute, f"{p}_cap": reading.rate.capacity,
                               f"{p}_left": reading.remaining, f"{p}_reserved": reading.reserved,
                               f"{p}_slack": reading.slack, "age": reading.age_s})
        try:
            with self.database.connection() as conn:
                conn.execute(_OBSERVE, params)
        except psycopg.Error:
            # A reading is advice, taken in the reply's path: losing one must not lose the reply it
            # came with. A database that is gone fails the next reservation, where runs handle it.
            return

    def pause(self, seconds: float, tokens: int, rates: Rates) -> None:
        try:
            with self.database.connection(UNREACHABLE_WAIT_S) as conn:
                conn.execute(_PAUSE, {"key": self.key, "seconds": float(seconds), **_rates(rates, tokens)})
        except Exception as error:
            if not unreachable(error):
                raise
