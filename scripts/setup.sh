#!/usr/bin/env bash
# Create ./.venv and install rlhfkit into it (idempotent; a second run takes a second).
#   scripts/setup.sh          the library, CLI and everything the demo needs
#   scripts/setup.sh --test   also the test tools and Debian's headless Chromium for the browser tests
# PyTorch is installed first, as a CPU build (torch==2.13.0), unless the venv already has a torch:
# GPU users install their own CUDA build into .venv first (any torch >=2.6,<3: FSDP2 and the gradient-norm helpers need 2.6) and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch ${TORCH_SPEC:-==2.13.0} (CPU build)"
  "${pip[@]}" install "torch${TORCH_SPEC:-==2.13.0}"
fi
extras=""; [ $want_test = 1 ] && extras="[dev]"
stamp=".venv/.rlhfkit-installed${extras}"
digest=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "[setup] installing rlhfkit${extras} and its dependencies"
  if ! "${pip[@]}" install -e ".${extras}" > .venv/install.log 2>&1; then
    cat .venv/install.log; echo "[setup] pip install failed (log above)"; exit 1
  fi
  .venv/bin/python -c "import rlhfkit, torch, transformers"
  echo "$digest" > "$stamp"
fi
if [ $want_test = 1 ]; then
  bash scripts/install_browser.sh
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__)')"
