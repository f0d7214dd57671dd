#!/usr/bin/env bash
# Install pca-protect and protect the two example photos with the default model, TAEF2 (FLUX.2's tiny
# autoencoder, MIT, 5 MB, fetched once from GitHub into ~/.cache/pca-attack/models, checksum-checked).
# Where TAEF2 cannot be fetched (no network), the bundled demo VAE runs instead and says so: it shows the
# pipeline but does NOT protect against real diffusion models. Extra arguments go to `pca-protect protect`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
python -m pip install -q -e ".[all]"
MODEL=taef2
if ! pca-protect models download "$MODEL"; then
  echo "demo.sh: $MODEL could not be fetched (why: above); protecting with the bundled demo VAE instead," \
       "which does NOT protect against real diffusion models" >&2
  MODEL=demo
fi
pca-protect protect examples -o protected --model "$MODEL" "$@"
echo "demo.sh: protected images and their certificates (*.json) are in protected/"
