#!/usr/bin/env bash
# Create or reuse a local virtual environment (.venv) and install catlab with its dev tools.
# torch is pinned to a CPU-friendly release and is installed only when the interpreter has none,
# so Colab (or any machine with a CUDA torch already) keeps its own.
# --tests: also get what the test suite needs beyond Python packages (a Chromium for the browser tests).
set -euo pipefail
WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    *) echo "bootstrap.sh: unknown option $arg (known: --tests)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
TORCH_PIN="${CATLAB_TORCH:-torch==2.13.0}"
if [ -n "${COLAB_RELEASE_TAG:-}" ] || [ "${CATLAB_NO_VENV:-0}" = "1" ]; then
  PY=python3   # Colab: install into the runtime's own Python
else
  if [ ! -x .venv/bin/python ]; then
    echo "catlab: creating .venv"
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "catlab: installing $TORCH_PIN"
  "$PY" -m pip install -q "$TORCH_PIN"
fi
# the library versions the docs' figures were measured with (scripts/constraints.txt), except when installing into the
# interpreter's own Python (Colab, CATLAB_NO_VENV=1), whose libraries stay, or with CATLAB_UNPINNED=1 (the newest
# that pyproject.toml allows)
PINS=()
if [ "$PY" != python3 ] && [ "${CATLAB_UNPINNED:-0}" != "1" ]; then
  PINS=(-c scripts/constraints.txt)
fi
# reinstall catlab only when its metadata or the pins changed (keeps re-runs fast)
STAMP=.venv/.catlab-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/constraints.txt -nt "$STAMP" ] \
  || ! "$PY" -c "import catlab, nbval, playwright" >/dev/null 2>&1; then
  echo "catlab: installing catlab[dev]${PINS[*]:+ with the pinned versions of scripts/constraints.txt}"
  "$PY" -m pip install -q -e ".[dev]" ${PINS[@]+"${PINS[@]}"}
  mkdir -p "$(dirname "$STAMP")" && touch "$STAMP"
fi
if [ "$WITH_TESTS" = 1 ]; then
  bash scripts/install_browser.sh "$PY"
fi
