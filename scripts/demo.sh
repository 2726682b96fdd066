#!/usr/bin/env bash
# Install napari-mobilesam and segment the bundled sample image from one click.
# Weights: $MOBILESAM_CHECKPOINT if set, else the official mobile_sam.pt (downloaded on first use,
# sha256-checked, cached; `mobilesam weights list` shows where).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch
.venv/bin/pip install -q -e .
mkdir -p out
.venv/bin/mobilesam segment sample --point 150,120 -o out/sample_mask.png
echo "mask written to out/sample_mask.png"
