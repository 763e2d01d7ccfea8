#!/usr/bin/env bash
# One-command install of calflow with its workflow and test extras.
#   bash install.sh            # into the active Python (a venv or conda env is recommended)
# torch is installed first and then pinned, so that packages which pull torchvision
# cannot swap it for another build. Set TORCH_SPEC to choose the build, e.g.
#   TORCH_SPEC="torch==2.13.0" (default) or a CUDA wheel on a GPU cluster.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "$TORCH_SPEC"
fi
torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
echo "torch==${torch_version}" > "$pins"
"$PY" -m pip install -c "$pins" -e ".[workflow,test]"
"$PY" -c "import calflow, torch; print(f'calflow {calflow.__version__} installed (torch {torch.__version__})')"
