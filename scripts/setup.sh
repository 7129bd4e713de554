#!/usr/bin/env bash
# Create .venv and install meta-cli with pinned dependencies. Idempotent: on a ready
# venv whose inputs did not change it only checks the imports and returns in seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.meta-cli-setup

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# The stamp records what was installed; any change to these files reinstalls.
want=$(cat constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$PY" -c "import meta_cli._l2l, torchvision, hydra" 2>/dev/null; then
  echo "meta-cli: .venv is ready ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi

# The machine-wide pip config names index folders that do not exist; drop those warnings.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

pip_install --upgrade pip
# learn2learn is built without isolation, so its build tools must be in the venv first.
pip_install cython setuptools wheel "numpy<2"
pip_install torch torchvision
# learn2learn 0.2.0's shipped C files do not compile on Python >= 3.11 (upstream #413);
# running build_ext with Cython 3 regenerates them.
if ! "$PY" -c "import learn2learn" 2>/dev/null; then
  pip_install --use-pep517 --no-build-isolation \
    --config-settings=--build-option=build_ext learn2learn==0.2.0
fi
pip_install -e ".[dev,launchers,optuna,tensorboard]"

"$PY" -c "import meta_cli._l2l, torchvision, hydra"  # _l2l silences gym's import notice
echo "$want" > "$STAMP"
echo "meta-cli: .venv is ready; activate with 'source .venv/bin/activate'"
