#!/usr/bin/env bash
# Create .venv/ in the checkout and install freshrec with pinned dependencies (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; raise SystemExit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))'; then
      echo "$candidate"; return 0
    fi
  done
  echo "freshrec needs Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
  return 1
}

stamp=".venv/.freshrec-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ -x .venv/bin/freshrec ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
py="$(pick_python)"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "installing freshrec and its pinned dependencies into .venv/ ..."
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,plot]"
echo "$want" > "$stamp"
