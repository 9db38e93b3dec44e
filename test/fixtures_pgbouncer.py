"""pgbouncer in front of the embedded Postgres, so the store's tests run a second time through a
transaction pooler (what Supabase's port 6543 is).

- ``pgbouncer`` (session): one pgbouncer started by this fixture (never a server someone else
  runs): ``pool_mode = transaction`` with ``server_reset_query_always = 1`` and ``DISCARD ALL``,
  so any session state (temporary tables, prepared statements, ``SET``, session advisory locks)
  is wiped after every transaction, and a store that relied on it across transactions breaks at
  once instead of one day in production. Listens on 127.0.0.1 (a free port); its ``*`` entry maps
  every database name to the embedded server's unix socket, so the databases each test clones
  from the template are reachable as they appear.
- ``route`` (function): ``"direct"`` unless a test module parametrizes it with ``POOLED``; the
  ``database_url`` fixture hands out the pooled URL on the ``"pgbouncer"`` route.

Without pgbouncer installed (``apt-get install pgbouncer``) the pooled runs skip, unless
``SECTIONS_REQUIRE_PGBOUNCER`` is set, as ``.ci/run`` does: there a missing pgbouncer fails.

Run as root, the embedded server runs as its own system user and its socket is that user's:
pgbouncer is started as the owner of the socket, which is also who can read its config here.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

__all__ = ["POOLED", "ROUTES", "Pgbouncer", "pgbouncer", "route"]

REQUIRE_ENV = "SECTIONS_REQUIRE_PGBOUNCER"
ROUTES = ("direct", "pgbouncer")
POOLED = pytest.mark.parametrize("route", ROUTES, indirect=True)
USER = "postgres"  # the embedded server's superuser (trust over its socket)


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Pgbouncer:
    """A pgbouncer process in transaction mode in front of the server reached by ``server_url``."""

    def __init__(self, binary: str, server_url: str):
        server = psycopg.connect(server_url, autocommit=True)
        with server:
            self.socket_dir = server.info.host  # the unix socket's folder
            self.server_port = server.info.port
        socket_file = Path(self.socket_dir) / f".s.PGSQL.{self.server_port}"
        owner = socket_file.stat().st_uid
        self.folder = Path(tempfile.mkdtemp(prefix="sections-pgbouncer-"))
        self.port = _free_port()
        (self.folder / "userlist.txt").write_text(f'"{USER}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(self._config())
        run_as = None
        if os.geteuid() == 0 and owner != 0:
            run_as = owner
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, owner, -1)
        self.binary, self.run_as = binary, run_as
        self.start()

    def start(self) -> None:
        """Start pgbouncer (again, after ``kill``: same port, same config) and wait until it listens."""
        self.process = subprocess.Popen([self.binary, str(self.folder / "pgbouncer.ini")], user=self.run_as,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """kill -9: every client connection drops at once, and nothing listens until ``start``."""
        self.process.kill()
        self.process.wait()
        (self.folder / "pgbouncer.pid").unlink(missing_ok=True)

    def _config(self) -> str:
        return f"""\
[databases]
* = host={self.socket_dir} port={self.server_port} user={USER}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.folder}/userlist.txt
pool_mode = transaction
server_reset_query = DISCARD ALL
server_reset_query_always = 1
default_pool_size = 20
max_client_conn = 500
logfile = {self.folder}/pgbouncer.log
pidfile = {self.folder}/pgbouncer.pid
"""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen on port {self.port}:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.folder / "pgbouncer.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def url_for(self, database_url: str) -> str:
        """The URL of the same database as ``database_url``, through this pgbouncer."""
        dbname = conninfo_to_dict(database_url)["dbname"]
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(embedded_pg) -> Iterator[Pgbouncer]:
    binary = _binary()
    if binary is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"pgbouncer is not installed and {REQUIRE_ENV} is set (.ci/run installs it with apt-get)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer): the runs through a transaction "
                    "pooler are skipped")
    bouncer = Pgbouncer(binary, embedded_pg.url)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    """How the store reaches the database: ``"direct"`` (the server's socket) unless a module runs
    its tests on both ``ROUTES`` with ``pytestmark = POOLED``."""
    return str(getattr(request, "param", "direct"))
