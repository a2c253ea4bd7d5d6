"""Real servers for the production-profile tests: PostgreSQL, MLflow, Prefect, on loopback.

The command lines are built here, once, so the fixtures and the static check of
`docker/compose.yaml` compare against the same flags: what the tests start is what compose runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_MLFLOW_APP = "basic-auth"  # `mlflow server --app-name` in docker/compose.yaml
MLFLOW_ADMIN = "admin"  # admin_username in docker/mlflow-auth.ini
PG_BIN_CANDIDATES = (Path("/usr/lib/postgresql/15/bin"),)
INSTALL_HINT = "run `sudo scripts/install-system-deps.sh` (installs postgresql-15)"
VENV_BIN = Path(sys.executable).parent
PG_USER = "bitune"  # the role compose creates too (POSTGRES_USER in docker/compose.yaml)

# Every server log the session opened, so a failing test can show them (see conftest.py).
SERVER_LOGS: dict[str, Path] = {}


def free_port() -> int:
    """A port nothing listens on right now; the tiny race until the server binds is acceptable."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# MLflow's job runner (GenAI scorers, trace archival) starts worker processes bitune never uses;
# on a small machine they slow every request by seconds. Compose sets the same.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_argv(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    app_name: str | None = None,
    allowed_hosts: str | None = None,
) -> list[str]:
    """`mlflow server` as compose runs it: SQL backend, proxied artifacts, one worker.

    `allowed_hosts` replaces MLflow's default Host-header allow list (localhost and private IPs),
    so it must name every host:port clients use, e.g. the compose service name.
    """
    argv = [
        "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if app_name:
        argv += ["--app-name", app_name]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    return argv


def prefect_server_argv(host: str, port: int) -> list[str]:
    """`prefect server start` as compose runs it; the database comes from the environment."""
    return ["prefect", "server", "start", "--host", host, "--port", str(port)]


def prefect_server_env(database_url: str) -> dict[str, str]:
    """The settings compose gives `prefect server start`; the password comes from PGPASSWORD."""
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def flag_names(argv: list[str]) -> set[str]:
    return {arg for arg in argv if arg.startswith("--")}


@dataclass
class ServerProcess:
    """A server started in its own process group, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        # The group holds the server's own children (uvicorn workers, Prefect services).
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace)

    def wait_http(self, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        """Poll `url` until it answers 200; fail early, with the log, if the server exits."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before {url} answered; "
                    f"log {self.log}:\n{log_tail(self.log)}"
                )
            try:
                request = urllib.request.Request(url, headers=headers or {})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = str(exc)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"{self.name}: {url} not healthy after {timeout:.0f}s ({last}); "
            f"log {self.log}:\n{log_tail(self.log)}"
        )


def start_server(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> ServerProcess:
    """Start `argv` (its executable from this venv when there) with `env` added to ours."""
    exe = VENV_BIN / argv[0]
    argv = [str(exe), *argv[1:]] if exe.exists() else argv
    log = log_dir / f"{name}.log"
    SERVER_LOGS[name] = log
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(name, proc, log)


def find_pg_bin() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError(f"PostgreSQL 15 server binaries not found in {PG_BIN_CANDIDATES[0]}; {INSTALL_HINT}")


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster; password auth on 127.0.0.1, as in compose."""

    host: str
    port: int
    user: str
    password: str
    databases: tuple[str, ...] = field(default=())

    def dsn(self, dbname: str, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL without the password: servers read it from PGPASSWORD, as compose does."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def env(self) -> dict[str, str]:
        """What a server process needs to log in (libpq and asyncpg both read PGPASSWORD)."""
        return {"PGPASSWORD": self.password}

    def connect(self, dbname: str):  # type: ignore[no-untyped-def]
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )


def _ensure_postgres_user() -> None:
    """The `postgres` system user (the Debian package makes it; a bare image may not have it)."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "postgres"], check=True)


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` system user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def run_postgres(databases: tuple[str, ...], password: str) -> Iterator[Postgres]:
    """initdb a fresh cluster in a temp dir, start it on a free port, create `databases`, tear down."""
    pg_bin = find_pg_bin()
    # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="bitune-pg-"))
    data, sock, log = root / "data", root / "sock", root / "postgres.log"
    sock.mkdir()
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        _ensure_postgres_user()
        for path in (root, sock, pwfile):
            shutil.chown(path, "postgres", "postgres")
    SERVER_LOGS["postgres"] = log
    port = free_port()

    def run(*argv: str) -> None:
        proc = subprocess.run(_as_postgres_user(list(argv)), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
                f"log:\n{log_tail(log)}"
            )

    run(str(pg_bin / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "-E", "UTF8",
        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")  # fmt: skip
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    run(str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    server = Postgres("127.0.0.1", port, PG_USER, password, databases)
    try:
        conn = server.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in databases:
                cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        yield server
    finally:
        subprocess.run(
            _as_postgres_user([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]


@dataclass(frozen=True)
class MlflowAuthServer:
    url: str
    admin_password: str

    @property
    def admin(self) -> tuple[str, str]:
        return (MLFLOW_ADMIN, self.admin_password)
