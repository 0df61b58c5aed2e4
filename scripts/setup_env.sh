#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv.
#
# Installs requirements.txt (runtime, version ranges) and requirements-dev.txt (test tools) with
# requirements-lock.txt as constraints: the exact versions CI ran. VIPMT_UNPINNED=1 installs from
# the ranges alone (newest matching versions), e.g. on a platform or Python the lock does not fit.
# Re-running is cheap: nothing is installed while these files and the mode are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
UNPINNED=${VIPMT_UNPINNED:-0}
files=(requirements.txt requirements-dev.txt requirements-lock.txt)
stamp="$VENV/.requirements.sha256"
want=$( { cat "${files[@]}"; echo "unpinned=$UNPINNED"; } | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
constraints=(-c requirements-lock.txt)
if [ "$UNPINNED" = "1" ]; then
  constraints=()
  echo "VIPMT_UNPINNED=1: installing the newest versions within requirements.txt's ranges" >&2
fi
echo "setting up $VENV (torch + torchvision, about a minute) ..." >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-dev.txt ${constraints[@]+"${constraints[@]}"}
echo "$want" > "$stamp"
