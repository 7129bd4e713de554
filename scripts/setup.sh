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
# One interpreter start for the check and the versions: importing torch is most of the time.
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && versions=$("$PY" -c "import meta_cli._l2l, torchvision, hydra, torch, numpy
print('torch', torch.__version__, 'numpy', numpy.__version__)" 2>/dev/null); then
  echo "meta-cli: .venv is ready ($versions)"
  exit 0
fi

# The machine-wide pip config names index folders that do not exist; drop those warnings,
# and pip's notice of qpth's numpy cap (expected, below; pip check then allows no other).
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt "$@" 2>&1 \
    | { grep -v -e "is ignored: it is neither a file nor a directory" \
          -e "^ERROR: pip's dependency resolver does not currently take into account" \
          -e "^qpth .* requires numpy<2" || true; }
}

pip_install --upgrade pip
# learn2learn is built without isolation, so its build tools, and the numpy it will run
# with, must be in the venv first. setuptools>=77 also builds this project's wheel in
# tests/test_packaging.py; packaging reads the requirements below.
pip_install cython "setuptools>=77" wheel packaging numpy
pip_install torch torchvision

# qpth 0.0.18's metadata says numpy<2, but its code runs on numpy 2 (so do learn2learn's
# MAML, MetaSGD, MetaDataset and SVClassifier: tests/test_install.py). pip cannot override
# one package's requirement, and its resolver also reads installed packages' metadata: any
# install that names learn2learn would follow it to qpth and back to numpy 1.x. So qpth,
# learn2learn and meta-cli go in with --no-deps, and what they declare (less those three
# and qpth's numpy cap) in one resolve under constraints.txt. (learn2learn's gym 0.26 has no
# cap; its env checker uses np.bool8, gone in numpy 2, but meta-cli makes no gym env.)
pip_install --no-deps qpth
# learn2learn 0.2.0's shipped C files do not compile on Python >= 3.11 (upstream #413);
# running build_ext with Cython 3 regenerates them. Built in this venv, against its numpy
# (--no-cache-dir: not a wheel cached by another venv), and again whenever numpy changes.
numpy_version=$("$PY" -c "import numpy; print(numpy.__version__)")
if [ "$(cat "$VENV/.learn2learn-numpy" 2>/dev/null)" != "$numpy_version" ] \
   || ! "$PY" -c "import importlib.metadata as m; m.version('learn2learn')" 2>/dev/null; then
  pip_install --no-deps --force-reinstall --no-cache-dir --use-pep517 --no-build-isolation \
    --config-settings=--build-option=build_ext learn2learn==0.2.0
  echo "$numpy_version" > "$VENV/.learn2learn-numpy"
fi
pip_install --no-deps -e .

requirements() {  # what the named distributions declare, less those installed with --no-deps
  "$PY" - "$@" <<'PYTHON'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

no_deps = {"qpth", "learn2learn", "meta-cli"}
for spec in sys.argv[1:]:
    dist, _, extras = spec.partition("[")
    environments = [{"extra": e} for e in extras.rstrip("]").split(",")] if extras else [{"extra": ""}]
    for line in requires(dist) or []:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in no_deps or (dist == "qpth" and name == "numpy"):
            continue
        if req.marker is None or any(req.marker.evaluate(env) for env in environments):
            extra = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            print(f"{req.name}{extra}{req.specifier}")
PYTHON
}
wanted=$(requirements "meta-cli[dev,launchers,optuna,tensorboard,mujoco,timm]" learn2learn qpth)
mapfile -t wanted <<< "$wanted"
pip_install "${wanted[@]}"

# Everything else must agree: the one conflict pip check may report is qpth's numpy cap.
conflicts=$("$PY" -m pip check 2>&1 | grep -v -e "^qpth .* has requirement numpy<2" \
  -e "^No broken requirements" || true)
if [ -n "$conflicts" ]; then
  printf 'meta-cli: error: conflicting requirements in .venv:\n%s\n' "$conflicts" >&2
  exit 1
fi
if [ "$("$PY" -c "import numpy; print(numpy.__version__)")" != "$numpy_version" ]; then
  echo "meta-cli: error: numpy changed after learn2learn was built; run scripts/setup.sh again" >&2
  exit 1
fi

"$PY" -c "import meta_cli._l2l, torchvision, hydra"  # _l2l silences gym's import notice
echo "$want" > "$STAMP"
echo "meta-cli: .venv is ready; activate with 'source .venv/bin/activate'"
