#!/usr/bin/env bash
# Install everything on a fresh machine and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a virtual X server for napari's GL context.
if ! command -v Xvfb >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq xvfb libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
     libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
     libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1) >/dev/null
fi

# The project's virtualenv. torch 2.14.1 + torchvision 0.29.1 come from this machine's local disk;
# torchvision is needed only by the parity oracles, never by the package itself.
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[all,dev]"

# Label Studio lives in its own virtualenv (its pins clash with ours); the end-to-end tests find it
# through LABEL_STUDIO_BIN.
if [ ! -x .venv-ls/bin/label-studio ]; then
  python3 -m venv .venv-ls
  .venv-ls/bin/pip install -q --upgrade pip
  .venv-ls/bin/pip install -q label-studio==1.23.2
fi
export LABEL_STUDIO_BIN="$PWD/.venv-ls/bin/label-studio"

# Fast allocator settings for torch on glibc (see README, Performance).
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$status"
