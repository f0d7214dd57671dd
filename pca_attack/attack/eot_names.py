"""The expectation-over-transformations presets: their names and what each simulates.

Torch-free, so that the options model (``pca_attack.options``: an enum in the service's schema and a select on
the web page), the CLI's ``--eot`` choices and the Python client list them without loading torch. The random
differentiable transformations themselves are built in ``pca_attack.attack.eot`` (one factory per name here;
``tests/engine/test_eot_filters.py`` checks the two tables name the same presets).
"""

from __future__ import annotations

EOT_DESCRIPTIONS: dict[str, str] = {
    "web-jpeg-85": "JPEG re-encoding at quality 80-90 (web CMS, CDN)",
    "jpeg-75": "JPEG re-encoding at quality 70-80",
    "jpeg-75-cubic": "JPEG re-encoding at quality 70-80, smooth (cubic) rounding",
    "jpeg-50": "aggressive JPEG re-encoding at quality 45-60",
    "social-resize": "downscale 0.5-0.9x, back up, then JPEG 75-90 (social networks)",
    "resize": "downscale 0.5-0.9x (bilinear, antialiased) and back up",
    "blur": "Gaussian blur, sigma 0.5-1.5 px",
    "noise": "additive Gaussian noise, std 2-8 on the 0-255 scale",
    "cleaner": "AdverseCleaner-style: 2-4 bilateral passes (colour sigma 0.03-0.08) + guided filter; measured on "
    "TAEF2 to collapse less everywhere, after that cleaner too (README): not recommended",
    "shift": "the content shifted 0-7 px down and right against the encoder's grid (an editor's free crop)",
    "mixed": "one of: identity, JPEG 50-95, social-resize, blur, noise (uniformly per sample)",
}

__all__ = ["EOT_DESCRIPTIONS"]
