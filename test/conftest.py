"""Shared fixtures: a real simulator process and a real embedded Postgres (and pgbouncer in front
of it, for the pooled runs), started once per session."""
from fixtures_simulator import *  # noqa: F401,F403
from fixtures_db import *  # noqa: F401,F403
from fixtures_pgbouncer import *  # noqa: F401,F403
