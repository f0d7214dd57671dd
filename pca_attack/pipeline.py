"""The whole data flow for files: decode -> attack -> encode -> decode again -> certify.

``Engine`` owns one frozen encoder (and optionally a decoder for round-trip diagnostics), groups
same-size images into micro-batches and returns, per image, the bytes to publish with their certificate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.pgd import Protector
from pca_attack.certify.report import Certificate, certificate
from pca_attack.errors import ModelLoadError, ModelNotFoundError
from pca_attack.io.formats import FORMATS, normalise_format
from pca_attack.io.images import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_image,
    encode_image,
    mime_type,
    tensor_to_array,
)
from pca_attack.models.encoder import Decoder, Encoder, load_decoder, load_encoder


@dataclass
class ProtectedImage:
    """One protected output: the file bytes and what was measured on them."""

    data: bytes
    format: str  # png | jpeg | webp
    mime_type: str
    certificate: Certificate
    loss_trace: list[float] = field(default_factory=list)  # loss at each PGD step

    @property
    def suffix(self) -> str:
        return FORMATS[self.format].suffix


class Engine:
    """Protect decoded images with one model; the unit the CLI, the batch client and the service share."""

    def __init__(self, encoder: Encoder, decoder: Decoder | None = None, *, max_batch: int = 4) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.max_batch = max(1, int(max_batch))

    @classmethod
    def from_spec(
        cls,
        model: str = "demo",
        *,
        device: str = "auto",
        dtype: str = "auto",
        with_decoder: bool = True,
        offline: bool | None = None,
        max_batch: int = 4,
    ) -> Engine:
        """Load the encoder (and the decoder when available and asked for) of ``model``."""
        encoder = load_encoder(model, device=device, dtype=dtype, offline=offline)
        decoder = None
        if with_decoder:
            try:
                decoder = load_decoder(model, device=device, dtype=dtype, offline=offline)
            except (ModelLoadError, ModelNotFoundError):
                decoder = None  # encoder-only weights: certificates then omit round-trip PSNR
        return cls(encoder, decoder, max_batch=max_batch)

    def protect(
        self,
        images: Sequence[DecodedImage],
        config: AttackConfig,
        *,
        fmt: str = "png",
        quality: int | None = None,
        keep_exif: bool = True,
    ) -> list[ProtectedImage]:
        """Protect ``images`` (any mix of sizes), in order. Same-size images share a micro-batch."""
        name = normalise_format(fmt)
        protector = Protector(self.encoder, config)
        results: list[ProtectedImage | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((image.height, image.width), []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                t0 = time.perf_counter()
                batch = torch.stack([images[i].to_tensor() for i in chunk])  # (b, 3, H, W)
                outcome = protector.protect(
                    batch,
                    grayscale=torch.tensor([images[i].grayscale for i in chunk]),
                    levels=torch.tensor([float(images[i].levels) for i in chunk]),
                )
                share = (time.perf_counter() - t0) / len(chunk)
                for row, i in enumerate(chunk):
                    t1 = time.perf_counter()
                    source = images[i]
                    pixels = tensor_to_array(outcome.images[row], source.levels)
                    data = encode_image(source, pixels, fmt=name, quality=quality, keep_exif=keep_exif)
                    written = decode_image(data, max_pixels=max(DEFAULT_MAX_PIXELS, source.width * source.height))
                    cert = certificate(
                        encoder=self.encoder,
                        config=config,
                        clean=source,
                        written=written,
                        fmt=name,
                        quality=quality if name != "png" else None,
                        steps_run=outcome.steps_run,
                        best_step=int(outcome.best_step[row]),
                        elapsed_s=0.0,
                        decoder=self.decoder,
                    )
                    cert.elapsed_s = round(share + time.perf_counter() - t1, 4)
                    results[i] = ProtectedImage(
                        data, name, mime_type(name), cert, outcome.loss_trace[row].tolist()
                    )
        return [r for r in results if r is not None]

    def protect_bytes(
        self,
        data: bytes | str | Path,
        config: AttackConfig,
        *,
        fmt: str = "png",
        quality: int | None = None,
        keep_exif: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ProtectedImage:
        """Decode one file (bytes or path), protect it, return the output and its certificate."""
        decoded = decode_image(data, max_pixels=max_pixels)
        return self.protect([decoded], config, fmt=fmt, quality=quality, keep_exif=keep_exif)[0]
