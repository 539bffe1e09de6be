#!/usr/bin/env bash
# The demo on a fresh machine: venv, local Kafka + Redis, topics, simulated events replayed,
# the worker running. Extra arguments go to `freshrec demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/freshrec demo "$@"
