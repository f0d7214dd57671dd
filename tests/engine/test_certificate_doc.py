"""docs/certificate.md names every certificate field (issue 11 item 15), and the README links to it."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from pca_attack.certify.members import EnsembleAggregate, ModelReport
from pca_attack.certify.report import Certificate

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "certificate.md"


def _named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def test_every_certificate_field_is_documented() -> None:
    named = _named(DOC.read_text(encoding="utf-8"))
    models: list[type[BaseModel]] = [Certificate, ModelReport, EnsembleAggregate]
    missing = sorted({f"{m.__name__}.{name}" for m in models for name in m.model_fields if name not in named})
    assert not missing, f"document these in docs/certificate.md: {missing}"


def test_scales_header_and_loss_magnitude_are_explained() -> None:
    text = DOC.read_text(encoding="utf-8")
    for fragment in ("0-1 scale", "0-255 scale", "base64url", "X-PCA-Certificate", "4/255", "Why `loss_clean` is huge"):
        assert fragment in text, fragment


def test_readme_links_the_certificate_page() -> None:
    assert "(docs/certificate.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
