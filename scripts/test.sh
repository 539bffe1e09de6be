#!/usr/bin/env bash
# The whole check: lint, format, types, import layers, doctests and tests against a real
# Kafka broker and Redis (started here unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OPENBLAS_NUM_THREADS=1
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== import layers"; .venv/bin/lint-imports
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  echo "== stack"; .venv/bin/freshrec stack up
fi
echo "== pytest"; .venv/bin/python -m pytest "$@"
