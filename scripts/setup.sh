#!/usr/bin/env bash
# Set up napari-bnadapt on a fresh Debian/Ubuntu machine: a virtual environment in .venv with the
# CPU build of PyTorch, the package (editable) with napari, the I/O readers and the test tools,
# and (as root, when missing) the X/Qt system libraries that napari needs under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

QT_DEBS="xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0 libxrender1 libxi6"

missing=""
for p in $QT_DEBS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system libraries:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "warning: missing system packages for the napari GUI:$missing (install them with apt-get as root)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pipi() {  # pip install, quiet unless it fails
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install --progress-bar off "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; echo "pip install $* failed" >&2; exit 1
  fi
  rm -f "$log"
}
# torch first, pinned to the version this machine provides as a CPU wheel (the package's range admits it)
pipi "torch==2.13.0"
pipi -e ".[all]"
.venv/bin/python -c "import napari_bnadapt, torch, napari; print('napari-bnadapt', napari_bnadapt.__version__, '| torch', torch.__version__, '| napari', napari.__version__)"
