"""data.remote, checked when params load: a local folder, or a URL DVC can push to.

DVC reads anything without `scheme://host` as a local path, so `s3:/dvc/bitune` (a slash missing)
would quietly become the folder `./s3:/dvc/bitune` and every push would land on this disk. A value
that looks like a mistyped URL is refused instead, with the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

# DVC's remote URL schemes (dvc.config_schema.REMOTE_SCHEMAS, DVC 3.x; a test keeps them in step)
DVC_SCHEMES = (
    "azure", "gdrive", "gs", "hdfs", "http", "https", "oss", "s3", "ssh", "webdav", "webdavs", "webhdfs",
)  # fmt: skip
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.DOTALL)  # two letters at least: C:\ is a drive
AWS_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
CREDENTIAL_KEYS = {"aws_access_key_id", "credential_process", "sso_start_url", "sso_session", "role_arn"}


def remote_problem(remote: str) -> str | None:
    """Why `remote` cannot be meant as written, with the fix; None when it is a local path or a URL."""
    if not remote.strip():
        return "is empty; set it to a folder (e.g. .dvc-storage) or a URL such as s3://bucket/prefix"
    if remote != remote.strip():
        return f"{remote!r} has spaces around it; write {remote.strip()!r}"
    match = SCHEME.match(remote)
    if match is None:
        return None  # a local folder, relative to the project or absolute
    scheme, rest = match.groups()
    if not rest.startswith("//"):
        url = f"{scheme.lower()}://{rest.lstrip('/')}"
        return (
            f"{remote!r} looks like a mistyped URL ({scheme}: needs //); write {url}, or ./{remote} "
            "if you mean a local folder"
        )
    if scheme.lower() != scheme and scheme.lower() in DVC_SCHEMES:
        return f"{remote!r}: DVC knows the scheme only in lower case; write {scheme.lower()}:{rest}"
    if scheme not in DVC_SCHEMES:
        if scheme.lower() == "file":
            return f"{remote!r}: write the folder's path without file://, e.g. {rest.removeprefix('//')}"
        return (
            f"{remote!r}: DVC has no remote type {scheme}://; use a folder or one of {', '.join(DVC_SCHEMES)}"
        )
    if not rest.removeprefix("//").split("/", 1)[0]:
        what = "bucket" if scheme in ("s3", "gs", "oss", "azure") else "host"
        return f"{remote!r} names no {what}; write {scheme}://{what}/prefix"
    return None


def missing_aws_credentials(
    remote: str, environ: Mapping[str, str] | None = None, home: Path | None = None
) -> str | None:
    """A warning when `remote` is s3:// and no AWS credentials are visible; None otherwise.

    Looks where boto3 looks without network: the environment, the shared credentials and config files.
    An EC2 or ECS instance role is not visible this way, hence a warning, not an error: the push after
    the data step is what fails, after the data is read and validated.
    """
    if not remote.startswith("s3://"):
        return None
    env = os.environ if environ is None else environ
    if any(env.get(key) for key in AWS_KEYS):
        return None
    home = Path.home() if home is None else home
    files = [
        Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"),
        Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config"),
    ]
    if any(_has_profile(path) for path in files):
        return None
    return (
        f"data.remote {remote}: no AWS credentials visible (AWS_ACCESS_KEY_ID, AWS_PROFILE, "
        "~/.aws/credentials); unless this machine has an instance role, the push after the data step "
        "will fail — set them first"
    )


def _has_profile(path: Path) -> bool:
    """The file gives some profile credentials: keys, a process, SSO or a role to assume."""
    try:
        text = path.expanduser().read_text(errors="replace")
    except OSError:
        return False
    keys = {line.partition("=")[0].strip().lower() for line in text.splitlines() if "=" in line}
    return bool(keys & CREDENTIAL_KEYS)
