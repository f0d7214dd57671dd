"""The whole data flow for files: decode -> attack -> encode -> decode again -> certify.

``Engine`` owns one frozen encoder (and optionally a decoder for round-trip diagnostics), groups
same-size images into micro-batches and returns, per image, the bytes to publish with their certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.editor_term import editor_pixels
from pca_attack.attack.loop_memory import for_config
from pca_attack.attack.memory import (
    AttackPlan,
    default_budget,
    loss_evaluations,
    memory_in_use,
    memory_model,
    memory_scope,
    plan_attack,
)
from pca_attack.attack.objective import ensemble_memory_model
from pca_attack.attack.pgd import Protector, ProtectResult
from pca_attack.attack.progress import StepProgress
from pca_attack.attack.sizes import bound_heap
from pca_attack.certify.members import ensemble_fields
from pca_attack.certify.report import Certificate, certificate
from pca_attack.errors import ConfigError, ModelLoadError, ModelNotFoundError
from pca_attack.fast.modes import fast_start, run_config
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
from pca_attack.models.ensemble import Ensemble, load_decoders, load_model, split_specs
from pca_attack.models.registry import DEFAULT_MODEL, DEMO_WARNING, uses_demo


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


def _measured(outcome: ProtectResult, row: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]] | None:
    """Row ``row``'s returned image (3, H, W) and the posterior the attack's final evaluation measured on it (the
    certificate reuses it when the written file decodes to exactly that image); None where none was kept."""
    if outcome.posterior is None:
        return None
    mean, logvar = outcome.posterior
    part = slice(row, row + 1)
    return outcome.images[row], (mean[part], None if logvar is None else logvar[part])


class Engine:
    """Protect decoded images with one model; the unit the CLI, the batch client and the service share.

    ``max_memory``: bytes the whole process may hold while protecting (None: ``default_budget``, a safe
    share of what is free). Every micro-batch is planned before any attack starts (untiled, or tiled, see
    ``pca_attack.attack.memory``); an image that cannot fit even in tiles raises ``MemoryBudgetError``.
    """

    def __init__(
        self, encoder: Encoder, decoder: Decoder | None = None, *, max_batch: int = 4, max_memory: int | None = None,
        ensemble: Ensemble | None = None, decoders: dict[str, Decoder | None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.ensemble = ensemble  # several models attacked at once (encoder is then its first member)
        self.decoders = decoders or {}  # ensemble: each member's decoder (None where it has none)
        self.max_batch = max(1, int(max_batch))
        self.max_memory = max_memory
        if max_memory is not None and encoder.device.type == "cpu":
            bound_heap()  # the resident size must follow the live tensors the plan counts
        # what the loaded model and the runtime hold: measured once, as memory freed after an attack stays
        # resident (allocator caches) yet is reused by the next one
        self.baseline_memory = memory_in_use(encoder.device)
        self._default_budget = default_budget(encoder.device)

    @classmethod
    def from_spec(
        cls,
        model: str | Sequence[str] = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        with_decoder: bool = True,
        offline: bool | None = None,
        max_batch: int = 4,
        max_memory: int | None = None,
        decoder: str | None = None,
    ) -> Engine:
        """Load the encoder (and the decoder when available and asked for) of ``model``; a model list
        (``"taef2,demo"`` or several specs) loads an ensemble (``pca_attack.models.ensemble``). ``decoder``:
        a separate decoder weights file for a single model (e.g. a tiny autoencoder's ``*_decoder.pth``);
        asked for explicitly, a failure to load it is an error rather than a silent omission."""
        loaded = load_model(model, device=device, dtype=dtype, offline=offline)
        if isinstance(loaded, Ensemble):
            decoders = load_decoders(loaded, model, device, dtype, offline) if with_decoder else {}
            first = loaded.members[0]
            return cls(first, decoders.get(first.name), max_batch=max_batch, max_memory=max_memory,
                       ensemble=loaded, decoders=decoders)
        model = split_specs(model)[0]  # one spec: the single-model path (load_encoder is cached)
        encoder = load_encoder(model, device=device, dtype=dtype, offline=offline)
        if decoder is not None:
            if not with_decoder:
                raise ConfigError("a decoder file was given but with_decoder=False")
            explicit = load_decoder(model, device=device, dtype=dtype, offline=offline, decoder=decoder)
            return cls(encoder, explicit, max_batch=max_batch, max_memory=max_memory)
        found = None
        if with_decoder:
            try:
                found = load_decoder(model, device=device, dtype=dtype, offline=offline)
            except (ModelLoadError, ModelNotFoundError):
                found = None  # encoder-only weights: certificates then omit round-trip PSNR
        return cls(encoder, found, max_batch=max_batch, max_memory=max_memory)

    def model_names(self) -> list[str]:
        """Names of the attacked models (one, or every member of an ensemble)."""
        members = self.ensemble.members if self.ensemble is not None else (self.encoder,)
        return [m.name for m in members]

    # -- planning --------------------------------------------------------------------------------------
    def available_memory(self) -> float:
        """Bytes an attack may add: the budget less what the process held once the model was loaded."""
        budget = self.max_memory if self.max_memory is not None else self._default_budget
        return budget - self.baseline_memory

    def plan(self, images: Sequence[DecodedImage], config: AttackConfig) -> list[tuple[list[int], AttackPlan]]:
        """Micro-batches (indices into ``images``) and how each is attacked; raises MemoryBudgetError
        (before any work) when an image cannot be protected within the budget even in tiles."""
        # an ensemble is sized by its members (the largest one's step; tiles on the LCM of their factors)
        model = memory_model(self.encoder) if self.ensemble is None else ensemble_memory_model(self.ensemble)
        model = for_config(model, config, self.encoder.latent_channels, str(self.encoder.device))
        held = sum(image.rgb.nbytes + (0 if image.alpha is None else image.alpha.nbytes) for image in images)
        available = self.available_memory() - held  # the decoded inputs stay alive through every attack
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((image.height, image.width), []).append(index)
        chunks: list[tuple[list[int], AttackPlan]] = []
        draws = config.eot_samples if config.eot else 1  # encoder passes per step and per loss-only pass (time)
        steps = config.steps * draws
        evaluations = loss_evaluations(config) * draws  # loss-only passes besides the steps (the plan's time)
        tiled_evaluations = loss_evaluations(config, tiled=True) * draws
        for (height, width), indices in groups.items():
            size = min(self.max_batch, len(indices))
            extra = editor_pixels(height, width, config.editor_resolution, config.editor_spread)
            plan = plan_attack(model, height, width, batch=size, steps=steps, available=available,
                               extra_pixels=extra, evaluations=evaluations, tiled_evaluations=tiled_evaluations)
            if plan.grid is not None and size > 1:  # tiles run one image at a time
                size = 1
                plan = plan_attack(model, height, width, steps=steps, available=available, extra_pixels=extra,
                                   evaluations=evaluations, tiled_evaluations=tiled_evaluations)
            chunks += [(indices[i : i + size], plan) for i in range(0, len(indices), size)]
            if (plan.grid is not None or plan.checkpoint) and self.encoder.device.type == "cpu":
                bound_heap()  # the budget binds (default one too): RSS must follow the live tensors (issue 12)
        return chunks

    # -- protecting ------------------------------------------------------------------------------------
    def protect(
        self,
        images: Sequence[DecodedImage],
        config: AttackConfig,
        *,
        fmt: str = "png",
        quality: int | None = None,
        keep_exif: bool = True,
        on_plan: Callable[[list[int], AttackPlan], None] | None = None,
        progress: Callable[[list[int], StepProgress], None] | None = None,
    ) -> list[ProtectedImage]:
        """Protect ``images`` (any mix of sizes), in order. Same-size images share a micro-batch.

        on_plan(indices, plan) is called before each micro-batch's attack; progress(indices, event) after
        every tile of every PGD step.
        """
        name = normalise_format(fmt)
        config = run_config(config)  # fast modes: steps = 0 or N, run from the generator's output
        protector = Protector(self.ensemble or self.encoder, config)
        results: list[ProtectedImage | None] = [None] * len(images)
        for chunk, plan in self.plan(images, config):
            if on_plan is not None:
                on_plan(chunk, plan)
            t0 = time.perf_counter()
            batch = torch.empty((len(chunk), 3, plan.height, plan.width))  # (b, 3, H, W)
            for row, i in enumerate(chunk):
                images[i].to_tensor(out=batch[row])
            gray = torch.tensor([images[i].grayscale for i in chunk])
            levels = torch.tensor([float(images[i].levels) for i in chunk])
            start, generator_id = fast_start(config, self.encoder, batch, gray, levels)
            outcome = protector.protect(
                batch, grayscale=gray, levels=levels, tiles=plan.run_grid,
                progress=None if progress is None else partial(progress, chunk), start=start,
            )
            del batch
            share = (time.perf_counter() - t0) / len(chunk)
            # certificates measure large images in tiles too, within what is free in the budget at the time
            budget = self.max_memory if self.max_memory is not None else self._default_budget
            with memory_scope(plan.budget_bytes, limit=budget, device=self.encoder.device):
                for row, i in enumerate(chunk):
                    t1 = time.perf_counter()
                    result = self._output(images[i], outcome, row, config, plan, name, quality, keep_exif)
                    result.certificate.elapsed_s = round(share + time.perf_counter() - t1, 4)
                    result.certificate.generator_id = generator_id
                    results[i] = result
        return [r for r in results if r is not None]

    def _output(
        self, source: DecodedImage, outcome: ProtectResult, row: int, config: AttackConfig, plan: AttackPlan,
        name: str, quality: int | None, keep_exif: bool,
    ) -> ProtectedImage:
        """Encode one protected image, decode the bytes again and certify them."""
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
            decoder=self.decoder if plan.grid is None else None,  # a full-size decode would not fit
            measured=_measured(outcome, row),
        )
        cert.tiles, cert.tile_size = plan.tiles, plan.tile_side
        if self.ensemble is not None:  # one entry per attacked model, plus the aggregate
            fields = ensemble_fields(self.ensemble, self.decoders, config, source, written, roundtrip=plan.grid is None)
            cert = cert.model_copy(update=fields)
        if plan.grid is not None and self.decoder is not None:
            cert.notes.append("round-trip PSNR not measured: the image was protected in tiles (memory budget)")
        if uses_demo(self.model_names()):
            cert.notes.append("warning: " + DEMO_WARNING)
        return ProtectedImage(data, name, mime_type(name), cert, outcome.loss_trace[row].tolist())

    def protect_bytes(
        self,
        data: bytes | str | Path,
        config: AttackConfig,
        *,
        fmt: str = "png",
        quality: int | None = None,
        keep_exif: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_plan: Callable[[list[int], AttackPlan], None] | None = None,
        progress: Callable[[list[int], StepProgress], None] | None = None,
    ) -> ProtectedImage:
        """Decode one file (bytes or path), protect it, return the output and its certificate."""
        decoded = decode_image(data, max_pixels=max_pixels)
        return self.protect(
            [decoded], config, fmt=fmt, quality=quality, keep_exif=keep_exif, on_plan=on_plan, progress=progress
        )[0]
