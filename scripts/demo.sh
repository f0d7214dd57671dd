#!/usr/bin/env bash
# Install pca-protect and protect the example photos with the bundled demo model.
# The demo VAE is tiny and does NOT protect against real diffusion models: use --model sd15 (or another
# registry name / local VAE) on a machine that can reach the weights for real protection.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
python -m pip install -q -e ".[all]"
pca-protect protect examples -o protected --model demo "$@"
python - <<'PY'
import json, pathlib
for report in sorted(pathlib.Path("protected").glob("*.json")):
    c = json.loads(report.read_text())
    print(f"{report.name}: linf={c['linf_255']:.0f}/255 psnr={c['psnr_db']:.1f} dB "
          f"kl {c['kl_clean']:.3f} -> {c['kl_protected']:.3f}, latent drift {c['latent_drift']:.2f}, "
          f"round-trip PSNR {c['roundtrip_psnr_clean_db']:.1f} -> {c['roundtrip_psnr_protected_db']:.1f} dB")
PY
