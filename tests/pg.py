"""A throwaway PostgreSQL server for the tests, and a fresh database per test.

The cluster is made with the distribution's own `initdb` (Debian: /usr/lib/postgresql/N/bin,
not on PATH) in a temporary folder, listens only on a Unix socket in that folder (no TCP),
trusts local connections, and is stopped and removed when the test session ends. `initdb`
refuses to run as root: as root the cluster belongs to the `postgres` system user.

No PostgreSQL binaries, or no psycopg: the PostgreSQL variants of the tests are skipped with
the reason (`pytest -ra` lists it), unless WMG_REQUIRE_PG=1 (CI), where that is an error.
WMG_PG_BIN names the folder of initdb and pg_ctl where they are elsewhere.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REQUIRED = os.environ.get("WMG_REQUIRE_PG") == "1"


def pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: WMG_PG_BIN if set, else Debian's versioned folders (newest
    first), else PATH."""
    if os.environ.get("WMG_PG_BIN"):
        folder = Path(os.environ["WMG_PG_BIN"])
        return folder if (folder / "initdb").exists() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"PostgreSQL tests required (WMG_REQUIRE_PG=1) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


class Cluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="wmg-pg-"))  # short: a socket path has ~100 bytes
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else None
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}{log}")

    def start(self) -> "Cluster":
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "wmg", "-E", "UTF8", "--locale=C")
        # no TCP at all; the socket in our own folder; no fsync (a throwaway cluster)
        opts = f"-c listen_addresses='' -k {self.root} -c fsync=off -c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://wmg@/{dbname}?host={self.root}"

    def new_database(self, prefix: str = "wmg", icu_locale: str | None = None) -> str:
        """A fresh, empty database; its SQLAlchemy URL. The cluster sorts text bytewise (locale C);
        `icu_locale` (e.g. en-US) gives the database a language's collation instead, as many servers have."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        icu = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}' LOCALE 'C'" if icu_locale else ""
        with psycopg.connect(host=str(self.root), user="wmg", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{icu}')
        return self.url(name)


def start_cluster() -> Cluster:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the psycopg driver is not installed (pip install 'wmg[postgres]')")
    bindir = pg_bin()
    if bindir is None:
        unavailable("no initdb in WMG_PG_BIN, /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)")
    cluster = Cluster(bindir)
    try:
        return cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, LookupError) as exc:
        try:
            cluster.stop()
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            shutil.rmtree(cluster.root, ignore_errors=True)
        unavailable(f"the throwaway cluster did not start: {exc}")
