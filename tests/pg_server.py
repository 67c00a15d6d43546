"""A real PostgreSQL server on loopback that the tests start themselves, in a temporary directory.

It runs Debian's postgresql binaries (`make postgres` installs them); nothing system-wide is used: no
cluster from pg_createcluster, no service, no fixed port. Clients get a URL with a password, as in a
real deployment; the helper itself talks to the server as its superuser through its private Unix socket.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

NOT_FOUND = "PostgreSQL server binaries not found; run `make postgres` (installs Debian's postgresql)"

DATABASE = "aiinfra"
ROLE = "aiinfra"
# The superuser initdb creates; named explicitly so it is the same whoever runs the tests.
SUPERUSER = "postgres"
# Used only when the tests run as root on a machine without Debian's `postgres` account.
FALLBACK_USER = "aiinfra-postgres"

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class PostgresNotFound(RuntimeError):
    """No initdb/pg_ctl/postgres/psql on this machine."""


class PostgresFailed(RuntimeError):
    """The server did not start or stop; the message carries the tail of its log."""


@dataclass(frozen=True)
class Binaries:
    initdb: str
    pg_ctl: str
    postgres: str
    psql: str


_TOOLS = ("initdb", "pg_ctl", "postgres", "psql")


def _from_dir(directory: str) -> Binaries | None:
    paths = [os.path.join(directory, tool) for tool in _TOOLS]
    if all(os.access(p, os.X_OK) for p in paths):
        return Binaries(*paths)
    return None


def _version_key(bin_dir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,): the newest installed major version wins.
    return tuple(int(n) for n in re.findall(r"\d+", Path(bin_dir).parent.name))


def find_binaries(environ: dict[str, str] | None = None) -> Binaries:
    """PG_BIN first, then Debian's /usr/lib/postgresql/<major>/bin (newest first), then PATH."""
    env = os.environ if environ is None else environ
    if env.get("PG_BIN"):
        found = _from_dir(env["PG_BIN"])
        if found is None:
            raise PostgresNotFound(f"{NOT_FOUND} (PG_BIN={env['PG_BIN']} lacks one of {', '.join(_TOOLS)})")
        return found
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        found = _from_dir(bin_dir)
        if found is not None:
            return found
    paths = [shutil.which(tool, path=env.get("PATH")) for tool in _TOOLS]
    if all(paths):
        return Binaries(*paths)  # type: ignore[arg-type]
    raise PostgresNotFound(NOT_FOUND)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None for "this one"; as root (which Postgres refuses) `postgres`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_USER)


# A test run killed outright (SIGKILL, a CI timeout) must not leave its server behind: setpriv (util-linux,
# always on Debian) asks the kernel to send the postmaster SIGQUIT, an immediate shutdown, when the thread
# that started it dies. So start servers from the thread that lives as long as them (pytest's main one).
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "QUIT", "--"] if shutil.which("setpriv") else []


def _clean_env(home: str) -> dict[str, str]:
    # PGHOST, PGPASSWORD, PGDATABASE... from a developer's shell would redirect psql and pg_ctl elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = home
    return env


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1 and a free port, with a role and database `aiinfra`.

    `url` is `postgresql://aiinfra:<password>@127.0.0.1:<port>/aiinfra`. TCP logins check the password
    (scram-sha-256), so a client given a wrong URL fails as it would against a real server; the helper's
    own administration goes through the Unix socket in the temp dir, trusted, as the superuser.
    fsync stays on: durability tests kill clients and the server and count what survived.
    """

    def __init__(self, base_dir: str | None = None, settings: dict[str, str] | None = None) -> None:
        self.bin = find_binaries()
        self.account = _server_account()
        self.settings = dict(settings or {})
        self.password = secrets.token_hex(16)
        self.port: int | None = None
        self._owns_base = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="aiinfra-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialised = False

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        """initdb on first use, then start and wait until it answers; creates role and database once."""
        if self._proc is not None:
            return self
        first = not self._initialised
        if first:
            self._prepare_dirs()
            self._initdb()
        # A free port can be taken between our probe and the server's bind: on the first start only
        # (a restart must keep its port) try another one.
        for attempt in range(3):
            if self.port is None or (first and attempt > 0):
                self.port = free_port()
            try:
                self._launch()
                break
            except PostgresFailed as err:
                if not (first and "could not bind" in str(err)) or attempt == 2:
                    raise
        if first:
            self.execute(
                f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'",
                f"CREATE DATABASE {DATABASE} OWNER {ROLE}",
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server this object started (`pg_ctl stop`), then kill its pid if it is still there.

        mode "fast" is a clean shutdown; "immediate" is like a crash: the next start replays the WAL.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                subprocess.run(
                    [self.bin.pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(STOP_TIMEOUT_S))],
                    **self._as_server(), capture_output=True, timeout=STOP_TIMEOUT_S + 5,
                )
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port and data directory: what clients see as a server restart."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop and delete the temp dir (data included)."""
        self.stop()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # ---- what tests use --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgresServer not started")
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database owned by `aiinfra`; returns its URL."""
        _check_identifier(name)
        self.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        _check_identifier(name)
        # FORCE: a test that leaked a connection must not make the next one fail here.
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def execute(self, *statements: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output."""
        if self.port is None:
            raise RuntimeError("PostgresServer not started")
        cmd = [
            self.bin.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
        ]
        for sql in statements:
            cmd += ["-c", sql]
        done = subprocess.run(cmd, env=_clean_env(str(self.base)), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PostgresFailed(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    # ---- internals -------------------------------------------------------------------------------------

    def _as_server(self) -> dict[str, object]:
        """subprocess arguments that run a command as the server's account, from a directory it can read."""
        kwargs: dict[str, object] = {"cwd": str(self.base), "env": _clean_env(str(self.base))}
        if self.account is not None:
            kwargs.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return kwargs

    def _prepare_dirs(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.account is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _initdb(self) -> None:
        done = subprocess.run(
            [
                self.bin.initdb, "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
                # Trusted only through the socket in our 0700 directory; TCP on loopback needs the password.
                "--auth-local=trust", "--auth-host=scram-sha-256",
                # Skips only initdb's final sync of the fresh files (they need not survive an OS crash);
                # the running server keeps fsync=on.
                "--no-sync",
            ],
            **self._as_server(), capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            raise PostgresFailed(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        self._initialised = True

    def _launch(self) -> None:
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "on",
            **self.settings,
        }
        cmd = [*_DIE_WITH_PARENT, self.bin.postgres, "-D", str(self.data_dir)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it after we return
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as_server())
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise PostgresFailed(f"postgres exited during start-up:\n{self._log_tail()}")
            try:
                self.execute("SELECT 1")
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except (PostgresFailed, OSError):
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise PostgresFailed(f"postgres did not accept connections in {START_TIMEOUT_S:.0f} s:\n{self._log_tail()}") from None
                time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _check_identifier(name: str) -> None:
    # Names go into SQL text (CREATE DATABASE takes no parameters): keep them to plain identifiers.
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")
