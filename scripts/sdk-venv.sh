#!/usr/bin/env bash
# Creates (once) the Python virtualenv used by the SDK compatibility test
# (tests/sdk/python_compat.py, run by tests/it/sdk_python.rs) and installs the official
# Volcengine Python SDK into it, and the `standardwebhooks` package the webhook tests verify
# deliveries with (tests/sdk/verify_standard_webhooks.py). Idempotent: does nothing when
# they are already there.
#
# Progress goes to stderr; the interpreter path is printed on stdout as the last line,
# so callers can do: TAGCAST_PYTHON="$(./scripts/sdk-venv.sh)".
#
# Environment: PYTHON (base interpreter, default python3),
#              VOLCENGINE_SDK_VERSION (default 1.0.229, the version known to work),
#              STANDARDWEBHOOKS_VERSION (default 1.3.0).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="$venv/bin/python"
base="${PYTHON:-python3}"
sdk_version="${VOLCENGINE_SDK_VERSION:-1.0.229}"
swh_version="${STANDARDWEBHOOKS_VERSION:-1.3.0}"

if [[ ! -x "$py" ]]; then
    echo "sdk-venv: creating $venv with $base" >&2
    "$base" -m venv "$venv"
fi

if ! "$py" -c 'import volcengine' >/dev/null 2>&1; then
    echo "sdk-venv: installing volcengine==$sdk_version into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "volcengine==$sdk_version"
    "$py" -c 'import volcengine' || { echo "sdk-venv: volcengine still not importable" >&2; exit 1; }
fi

if ! "$py" -c 'import standardwebhooks' >/dev/null 2>&1; then
    echo "sdk-venv: installing standardwebhooks==$swh_version into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "standardwebhooks==$swh_version"
    "$py" -c 'import standardwebhooks' || { echo "sdk-venv: standardwebhooks still not importable" >&2; exit 1; }
fi

echo "$py"
