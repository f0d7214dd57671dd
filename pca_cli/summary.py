"""One line per protected image for the CLI: what the protection did (collapse, round-trip damage) and what it
cost (the change's PSNR / SSIM, the budget on the written bytes), read from the image's certificate."""

from __future__ import annotations

from pathlib import Path

from pca_attack.certify.report import Certificate


def collapse_text(cert: Certificate) -> str:
    """``collapse 77%`` for a minimising preset (loss drop), ``loss x3.10`` for a maximising one."""
    ratio = cert.loss_protected / max(cert.loss_clean, 1e-30)
    return f"collapse {1 - ratio:.0%}" if cert.direction == "minimize" else f"loss x{ratio:.2f}"


def result_line(source: Path, dest: Path, cert: Certificate) -> str:
    """E.g. ``cat.jpg -> out/cat.png: collapse 77%, round trip 32.8 -> 25.7 dB; change PSNR 28.3 dB,
    SSIM 0.678, budget ok`` (the round trip only where the model has a decoder; ``, also at 1024 px for editors``
    where an editor's downscaled copy was collapsed too)."""
    parts = [collapse_text(cert)]
    if cert.roundtrip_psnr_clean_db is not None and cert.roundtrip_psnr_protected_db is not None:
        parts.append(f"round trip {cert.roundtrip_psnr_clean_db:.1f} -> {cert.roundtrip_psnr_protected_db:.1f} dB")
    psnr = "identical" if cert.psnr_db is None else f"{cert.psnr_db:.1f} dB"
    budget = "budget ok" if cert.budget_ok else "BUDGET EXCEEDED"
    editor = f", also at {cert.editor_resolution} px for editors" if cert.editor_resolution else ""
    return f"{source.name} -> {dest}: {', '.join(parts)}{editor}; change PSNR {psnr}, SSIM {cert.ssim:.3f}, {budget}"
