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

# Debian's Chromium for the Label Studio browser test (playwright's own browser download needs the
# internet; the test launches /usr/bin/chromium).
if [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi

# The project's virtualenv. torch 2.14.1 + torchvision 0.29.1 come from this machine's local disk;
# torchvision is needed only by the parity oracles, never by the package itself.
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[all,dev]"
# micro-sam (test oracle for the AIS decoder) and the parts of its stack it imports, without their deps
.venv/bin/pip install -q --no-deps micro-sam==1.8.14 torch-em==0.10.9 python-elf==0.9.2 bioimage-cpp==0.10.0
# EfficientViT-SAM's official code (test oracle); its requirements are torch/torchvision/numpy only
.venv/bin/pip install -q --no-deps efficientsam==1.0.0

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

# Two pytest processes: the napari tests load Qt and Mesa's GL (which brings its own LLVM); once
# that is in a process, importing triton (pulled in by torchvision, which the parity oracles
# import) segfaults on the clashing LLVM symbols. Each process writes a JUnit report; the last
# line printed is the combined count.
reports=$(mktemp -d)
run_pytest() {  # name, pytest args...
  local name=$1; shift
  set +e
  .venv/bin/python -m pytest --junitxml="$reports/$name.xml" "$@"
  local code=$?
  set -e
  if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests in the $name run: treating as failure" >&2
    code=1
  fi
  return "$code"
}
status=0
# Lint and format are part of the suite (rules in pyproject.toml, [tool.ruff]).
if ! .venv/bin/ruff check . || ! .venv/bin/ruff format --check .; then
  echo "ruff: lint or format check failed (run: .venv/bin/ruff check --fix . && .venv/bin/ruff format .)" >&2
  status=1
fi
run_pytest core --ignore=tests/napari "$@" || status=$?
run_pytest napari tests/napari "$@" || status=$?
.venv/bin/python - "$reports" <<'PY'
import sys, pathlib, xml.etree.ElementTree as ET
totals = dict(tests=0, failures=0, errors=0, skipped=0)
for report in pathlib.Path(sys.argv[1]).glob("*.xml"):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"{passed} passed, {failed} failed, {totals['skipped']} skipped")
PY
rm -rf "$reports"
exit "$status"
