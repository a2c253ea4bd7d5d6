"""Static checks of docker/, prefect.yaml and the secrets convention (fast: no server, no daemon).

No Compose-spec JSON schema ships in any installed package (and none is downloaded), so compose.yaml
gets structural checks only: what it references exists, its server commands match the ones the
production tests start, and no credential sits in plain text.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .servers import (
    COMPOSE_MLFLOW_APP,
    MLFLOW_SERVER_ENV,
    REPO,
    flag_names,
    mlflow_server_argv,
    prefect_server_argv,
    prefect_server_env,
)

DOCKER = REPO / "docker"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
UNESCAPED_DOLLAR = re.compile(r"(?<!\$)\$(?![${]|[A-Za-z_])")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_mlflow_service_runs_the_tested_command(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["mlflow"])
    assert argv[:2] == ["mlflow", "server"]
    tested = mlflow_server_argv("db", "s3://b/", "h", 1, app_name=COMPOSE_MLFLOW_APP, allowed_hosts="h:1")
    assert flag_names(argv) == flag_names(tested)
    assert flag_names(mlflow_server_argv("db", "dir", "h", 1)) <= flag_names(argv)
    assert _option(argv, "--app-name") == COMPOSE_MLFLOW_APP
    assert _option(argv, "--workers") == _option(tested, "--workers")
    assert _option(argv, "--backend-store-uri").startswith("postgresql+psycopg2://")
    assert _option(argv, "--artifacts-destination").startswith("s3://")
    # --allowed-hosts replaces MLflow's defaults: the name the worker uses must be on it.
    worker_uri = _env(services["prefect-worker"])["MLFLOW_TRACKING_URI"]
    assert worker_uri.removeprefix("http://") in _option(argv, "--allowed-hosts").split(",")
    assert MLFLOW_SERVER_ENV.items() <= _env(services["mlflow"]).items()


def test_prefect_service_runs_the_tested_command(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["prefect-server"])
    assert argv[:3] == ["prefect", "server", "start"]
    assert flag_names(argv) == flag_names(prefect_server_argv("h", 1))
    env = _env(services["prefect-server"])
    tested = prefect_server_env("postgresql+asyncpg://u@h/prefect")
    assert tested.keys() <= env.keys()
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == tested["PREFECT_SERVER_ANALYTICS_ENABLED"]
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    port = _option(argv, "--port")
    assert _env(services["prefect-worker"])["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"


def test_every_referenced_file_exists(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    missing = []
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            if not (context / build["dockerfile"]).is_file():
                missing.append(f"{name}: dockerfile {build['dockerfile']}")
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not (DOCKER / source).exists():
                missing.append(f"{name}: bind mount {source}")
    for kind in ("secrets", "configs"):
        for name, spec in compose.get(kind, {}).items():
            path = DOCKER / spec["file"]
            if not path.exists() and not path.with_name(path.name + ".example").exists():
                missing.append(f"{kind}.{name}: {spec['file']} (nor .example)")
    assert missing == []


def test_services_reference_only_declared_secrets_and_configs(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        mounted = {}
        for entry in service.get("secrets", []):
            source = entry if isinstance(entry, str) else entry["source"]
            target = source if isinstance(entry, str) else entry.get("target", source)
            assert source in compose["secrets"], f"{name}: undeclared secret {source}"
            mounted[f"/run/secrets/{target}"] = source
        for entry in service.get("configs", []):
            assert entry["source"] in compose["configs"], f"{name}: undeclared config {entry['source']}"
        for key, value in _env(service).items():
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value in mounted, f"{name}: {key} points at {value}, which the service does not mount"


def test_every_service_has_a_healthcheck_or_waits_for_one(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("healthcheck") or service.get("depends_on"), name
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec.get("condition") == "service_healthy":
                assert services[dependency].get("healthcheck"), (
                    f"{name} waits for {dependency}'s missing healthcheck"
                )


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image name (a built image needs a versioned tag too)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), f"{name}: {image} is not pinned"
    for dockerfile in DOCKER.glob("Dockerfile.*"):
        if dockerfile.suffix == ".dockerignore":
            continue
        text = dockerfile.read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
        for base in re.findall(r"^FROM (\S+)", text, re.MULTILINE):
            for arg, default in args.items():
                base = base.replace(f"${{{arg}}}", default)
            assert re.search(r":[\w.-]+$", base) and not base.endswith(":latest"), (
                f"{dockerfile.name}: {base}"
            )


def test_no_plaintext_credentials_in_compose(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in _env(service).items():
            if SECRET_WORDS.search(key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}: {key} holds a credential in plain text; use {key}_FILE and a secret")
            if SECRET_WORDS.search(key):  # file-env reads only /run/secrets/; any other path stays a path
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value} is not a docker secret"
            assert not URL_WITH_PASSWORD.search(value), f"{name}: {key} has a password in its URL"
        for arg in _argv(service) if "command" in service else []:
            assert not URL_WITH_PASSWORD.search(arg), f"{name}: a password in its command line"
            assert not UNESCAPED_DOLLAR.search(arg), f"{name}: write a shell `$` as `$$` in compose: {arg}"


def test_postgres_creates_every_database_the_servers_use(services: dict[str, dict[str, Any]]) -> None:
    created = {_env(services["postgres"])["POSTGRES_DB"]}
    for sql in (DOCKER / "postgres-init").glob("*.sql"):
        created |= set(re.findall(r"CREATE DATABASE (\w+)", sql.read_text(), re.IGNORECASE))
    auth = configparser.ConfigParser()
    auth.read(DOCKER / "mlflow-auth.ini")
    used = {
        _option(_argv(services["mlflow"]), "--backend-store-uri"),
        _env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"],
        auth["mlflow"]["database_uri"],
    }
    user = _env(services["postgres"])["POSTGRES_USER"]
    for url in used:
        assert url.rsplit("/", 1)[1] in created, url
        assert f"://{user}@postgres:5432/" in url, url


def test_mlflow_auth_ini_is_valid_for_the_installed_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded as a file: importing the package mlflow.server.auth starts building the whole server app.
    spec = importlib.util.find_spec("mlflow")
    assert spec and spec.origin
    auth_dir = Path(spec.origin).parent / "server" / "auth"
    config_spec = importlib.util.spec_from_file_location("mlflow_auth_config", auth_dir / "config.py")
    assert config_spec and config_spec.loader
    auth_config = importlib.util.module_from_spec(config_spec)
    config_spec.loader.exec_module(auth_config)

    ours = configparser.ConfigParser()
    ours.read(DOCKER / "mlflow-auth.ini")
    shipped = configparser.ConfigParser()
    shipped.read(auth_dir / "basic_auth.ini")
    known = set(shipped["mlflow"]) | {"admin_password", "read_database_uri", "auth_cache_ttl_seconds",
                                      "auth_cache_max_size", "workspace_cache_max_size",
                                      "workspace_cache_ttl_seconds"}  # fmt: skip
    assert set(ours["mlflow"]) <= known, set(ours["mlflow"]) - known
    assert "admin_password" not in ours["mlflow"], "the admin password comes from a secret"

    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(DOCKER / "mlflow-auth.ini"))
    config = auth_config.read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.admin_username == "admin" and config.admin_password is None
    assert not URL_WITH_PASSWORD.search(config.database_uri)


def test_example_secrets_are_usable_and_real_secrets_are_ignored_by_git() -> None:
    examples = sorted((DOCKER / "secrets").glob("*.example"))
    assert {p.name.removesuffix(".example") for p in examples} == set(
        yaml.safe_load((DOCKER / "compose.yaml").read_text())["secrets"]
    )
    admin = (DOCKER / "secrets" / "mlflow_admin_password.example").read_text().strip()
    assert len(admin) >= 12, "MLflow refuses admin passwords under 12 characters"
    assert len((DOCKER / "secrets" / "minio_root_password.example").read_text().strip()) >= 8  # MinIO minimum
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/secrets/postgres_password"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "docker/secrets/postgres_password would be committed"
    kept = subprocess.run(
        ["git", "check-ignore", "-q", "docker/secrets/postgres_password.example"], cwd=REPO, check=False
    )
    assert kept.returncode == 1, "the .example templates must stay in git"


def test_file_env_exports_secret_files_and_fails_on_missing_ones(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    secret = secrets_dir / "pg"
    secret.write_text("s3cr3t value\n")
    # FILE_ENV_DIR stands in for /run/secrets, which a test cannot create
    env = {"PATH": os.environ["PATH"], "FILE_ENV_DIR": str(secrets_dir), "PGPASSWORD_FILE": str(secret)}
    script = str(DOCKER / "file-env.sh")
    shown = subprocess.run(["sh", script, "env"], env=env, capture_output=True, text=True, check=True).stdout
    assert "PGPASSWORD=s3cr3t value\n" in shown
    assert "PGPASSWORD_FILE" not in shown

    env["PGPASSWORD_FILE"] = str(secrets_dir / "absent")
    failed = subprocess.run(["sh", script, "true"], env=env, capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and "PGPASSWORD_FILE" in failed.stderr


def test_file_env_leaves_path_variables_outside_the_secrets_folder_alone(tmp_path: Path) -> None:
    """SSL_CERT_FILE, AWS_CONFIG_FILE and the like name files their programs read themselves: turned
    into SSL_CERT=<a CA bundle> they vanish (TLS to an internal CA fails), or the bundle overflows
    the environment and every later exec fails with 'Argument list too long'."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n" + "A" * 200_000 + "\n-----END CERTIFICATE-----\n")
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = eu-west-1\n")
    env = {
        "PATH": os.environ["PATH"],
        "FILE_ENV_DIR": str(secrets_dir),
        "SSL_CERT_FILE": str(bundle),
        "AWS_CONFIG_FILE": str(aws_config),
    }
    proc = subprocess.run(
        ["sh", str(DOCKER / "file-env.sh"), "env"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    shown = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert shown.get("SSL_CERT_FILE") == str(bundle) and "SSL_CERT" not in shown
    assert shown.get("AWS_CONFIG_FILE") == str(aws_config) and "AWS_CONFIG" not in shown


def test_dockerfiles_install_the_project_with_constraints_as_a_non_root_user() -> None:
    torch_pin = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert torch_pin
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (DOCKER / name).read_text()
        assert 'pip install -c constraints.txt ".[prod]"' in text, name
        assert f"torch=={torch_pin.group(1)}" in text, f"{name}: torch differs from constraints.txt"
        assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE), f"{name}: runs as root"
        assert 'ENTRYPOINT ["bitune"]' in text, name
        ignore = (DOCKER / f"{name}.dockerignore").read_text()
        for line in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
            for source in line.split():
                assert (REPO / source).exists(), f"{name}: COPY {source}: no such file"
                assert f"!{source}" in ignore or f"!{source}/**" in ignore, (
                    f"{name}: {source} is dockerignored"
                )


def test_prefect_yaml_deployment_is_valid_and_points_at_real_files(
    prefect_yaml: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    model = PrefectYamlModel.model_validate(prefect_yaml)
    (deployment,) = [d for d in model.deployments if d.name == "retrain-nightly"]
    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert deployment.parameters == {"params_file": "params/production.yaml", "overrides": []}
    assert (REPO / deployment.parameters["params_file"]).is_file()

    schedule = prefect_yaml["deployments"][0]["schedules"][0]
    CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert schedule["cron"] == "0 3 * * *"
    limit = prefect_yaml["deployments"][0]["concurrency_limit"]
    assert limit["limit"] == 1
    ConcurrencyLimitStrategy(limit["collision_strategy"])

    path, _, function = deployment.entrypoint.partition(":")
    tree = ast.parse((REPO / path).read_text())
    (flow_def,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    arguments = {a.arg for a in flow_def.args.args + flow_def.args.kwonlyargs}
    assert set(deployment.parameters) <= arguments, f"{path}:{function} takes {sorted(arguments)}"

    pool = deployment.work_pool.name if deployment.work_pool else None
    worker_command = " ".join(_argv(services["prefect-worker"]))
    assert f"--pool {pool}" in worker_command and f"work-pool create {pool}" in worker_command


def test_prod_extra_installs_what_the_compose_services_need() -> None:
    """The images install `.[prod]`: PostgreSQL and S3 clients, and Flask-WTF for basic-auth."""
    import tomllib

    prod = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["prod"]
    requirement_name = re.compile(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?")
    names = {requirement_name.match(req.replace(" ", "")).group(0).lower() for req in prod}  # type: ignore[union-attr]
    assert {"psycopg2-binary", "boto3", "dvc-s3"} <= names
    assert "mlflow[auth]" in names or "flask-wtf" in names, (
        "mlflow --app-name basic-auth (compose.yaml) needs Flask-WTF: add mlflow[auth] to the prod extra"
    )
