"""The theory docs stand alone (issue 11 item 16): no link into ../shared/, the closed forms restated."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["README.md", "docs/theory.md", "docs/certificate.md"])
def test_no_link_outside_the_repository(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert "../shared" not in text and "shared/reference" not in text and "collapse-theory.md" not in text


def test_theory_doc_restates_the_thresholds() -> None:
    text = (ROOT / "docs" / "theory.md").read_text(encoding="utf-8")
    assert "## The closed forms and their sources" in text
    for fragment in ("collapses iff ζᵢ² ≤ β η_dec²", "collapses iff κᵢ ≤ β η_dec²", "Wang & Ziyin 2022", "Papyan"):
        assert fragment in text, fragment


def test_analysis_sources_do_not_point_at_a_missing_file() -> None:
    for path in (ROOT / "pca_attack" / "analysis").glob("*.py"):
        assert "collapse-theory.md" not in path.read_text(encoding="utf-8"), path.name
