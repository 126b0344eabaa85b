#!/usr/bin/env bash
# Creates .venv with torch, torchvision, detectron2 and d2ssl (editable), reproducibly and idempotently.
#
#   bash scripts/setup_env.sh            # default: CPU machine, registries only
#   D2SSL_VENV=/path/to/venv bash scripts/setup_env.sh
#
# detectron2 is not on PyPI. If `import detectron2` already works in the venv (for instance after
# `pip install 'git+https://github.com/facebookresearch/detectron2.git'`), it is left alone.
# Otherwise the official Python sources are taken from the `sal-detectron2==0.7.2` wheel
# (detectron2 commit a59f0563 plus a 3-line fix; sha256 pinned below). Only its `detectron2/`
# folder is installed: its prebuilt `_C` targets Python 3.10 and is not needed (that version
# imports `_C` lazily), and its top-level `tools` package would shadow ours.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${D2SSL_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
D2_WHEEL=sal_detectron2-0.7.2-cp310-none-any.whl
D2_WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
CACHE=${D2SSL_CACHE:-$ROOT/.cache}

step() { echo "[setup] $*"; }
fail() { echo "[setup] FAILED at step: $*" >&2; exit 1; }

step "virtual environment at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || fail "python -m venv $VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

have() { "$PY" -c "$1" >/dev/null 2>&1; }

step "torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
if ! have "import torch, torchvision, sys; sys.exit(not (torch.__version__.split('+')[0]=='$TORCH_VERSION' and torchvision.__version__.split('+')[0]=='$TORCHVISION_VERSION'))"; then
  # PyPI's Linux torch wheel carries the CUDA libraries (about 5 GB installed), also on a CPU-only
  # machine. Where download.pytorch.org is reachable, pre-install the CPU build into the venv first
  # (pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION --index-url
  # https://download.pytorch.org/whl/cpu): this step accepts any build of the pinned versions.
  step "  installing from PyPI: the CUDA build, about 5 GB, even on a CPU-only machine (see the comment above)"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" || fail "pip install torch/torchvision"
fi

step "detectron2 runtime dependencies"
# Declared by detectron2's setup.py; pinned where newer releases break that commit.
D2_DEPS=("fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "pycocotools>=2.0.2" "omegaconf>=2.1,<2.4"
         "hydra-core>=1.1" "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0"
         tensorboard matplotlib "setuptools<81" packaging Pillow)
if ! have "import fvcore, iopath, pycocotools, omegaconf, hydra, termcolor, yacs, tabulate, cloudpickle, tqdm, tensorboard, matplotlib, pkg_resources"; then
  "${PIP[@]}" "${D2_DEPS[@]}" || fail "pip install detectron2 runtime dependencies"
fi

step "detectron2"
if have "import detectron2.config, detectron2.engine, detectron2.modeling"; then
  step "  detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/$D2_WHEEL" ]; then
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
      --python-version 3.10 -d "$CACHE" "sal-detectron2==0.7.2" || fail "pip download sal-detectron2==0.7.2"
  fi
  echo "$D2_WHEEL_SHA256  $CACHE/$D2_WHEEL" | sha256sum -c --quiet - || fail "sha256 of $CACHE/$D2_WHEEL"
  SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" - "$CACHE/$D2_WHEEL" "$SITE" <<'PYEOF' || fail "unpack detectron2/ from the wheel"
import shutil, sys, zipfile
from pathlib import Path
wheel, site = sys.argv[1], Path(sys.argv[2])
target = site / "detectron2"
staging = site / "detectron2.partial"
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        # Only the package itself: not the cp310 _C extension, not the wheel's top-level `tools`.
        if not name.startswith("detectron2/") or name.endswith(".so") or name.endswith("/"):
            continue
        out = staging / name[len("detectron2/"):]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(zf.read(name))
shutil.rmtree(target, ignore_errors=True)
staging.rename(target)
print(f"[setup]   unpacked detectron2 sources into {target}")
PYEOF
  have "import detectron2.config, detectron2.engine, detectron2.modeling" || fail "import detectron2 after unpacking"
fi

step "d2ssl (editable) with dev extras"
if ! have "import d2ssl, faiss, submitit, optuna, matplotlib, pytest, ruff, sklearn, skimage" || \
   [ "$("$PY" -c 'import d2ssl, os; print(os.path.dirname(os.path.dirname(os.path.abspath(d2ssl.__file__))))' 2>/dev/null)" != "$ROOT" ]; then
  "${PIP[@]}" -e "$ROOT[dev]" || fail "pip install -e $ROOT[dev]"
fi

step "real image data: Fashion-MNIST (Debian package dataset-fashion-mnist)"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
      || fail "apt-get install dataset-fashion-mnist"
  else
    echo "[setup]   not root or no apt-get: run 'sudo apt-get install -y dataset-fashion-mnist'" >&2
    echo "[setup]   (the demo and the tests that use real photos need it; they stop naming the package if it is missing)" >&2
  fi
fi

step "check: d2ssl sees everything it relies on in detectron2"
"$PY" -m d2ssl.utils.env || fail "detectron2 self-check (python -m d2ssl.utils.env)"
step "done: activate with 'source $VENV/bin/activate'"
