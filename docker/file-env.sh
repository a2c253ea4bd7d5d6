#!/bin/sh
# Docker secrets arrive as files under /run/secrets; the servers read credentials from variables.
# For every NAME_FILE=/run/secrets/x in the environment, export NAME=<contents of x> (trailing
# newline dropped) and unset NAME_FILE, then exec the command. Same convention as the postgres image.
# Only paths under the secrets folder count: SSL_CERT_FILE, AWS_CONFIG_FILE, PIP_CONFIG_FILE and the
# like are paths the programs read themselves, and must reach them as they are.
# FILE_ENV_DIR names another secrets folder (a test, or running the servers outside docker).
set -eu
secrets_dir="${FILE_ENV_DIR:-/run/secrets}"
secrets_dir="${secrets_dir%/}/"
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  eval "path=\${${name}_FILE}"
  case "$path" in
    "$secrets_dir"*) ;;
    *) continue ;;
  esac
  if [ ! -r "$path" ]; then
    echo "file-env: ${name}_FILE=$path is not a readable file; create the secret (docs/production.md)" >&2
    exit 1
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
