#!/bin/sh
# Docker secrets arrive as files under /run/secrets; the servers read credentials from variables.
# For every NAME_FILE=/path in the environment, export NAME=<contents of /path> (trailing newline
# dropped) and unset NAME_FILE, then exec the command. Same convention as the postgres image.
set -eu
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  eval "path=\${${name}_FILE}"
  if [ ! -r "$path" ]; then
    echo "file-env: ${name}_FILE=$path is not a readable file; create the secret (docs/production.md)" >&2
    exit 1
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
