"""Request and response models of the API (the engine's ``Certificate`` is reused as is)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from pca_attack.certify.report import Certificate
from pca_attack.options import FormatName

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. unsupported_image, queue_full")
    message: str = Field(description="what went wrong and what to do about it")
    detail: Any = Field(default=None, description="extra structured information (e.g. validation errors)")


class ErrorResponse(BaseModel):
    """The shape of every error answer."""

    error: ErrorInfo


class ProtectJSON(BaseModel):
    """`?response=json` variant of POST /v1/protect."""

    certificate: Certificate
    format: FormatName
    filename: str = Field(description="suggested file name of the output (sanitised, new suffix)")
    image_base64: str = Field(description="the protected file, standard base64")


class JobProgress(BaseModel):
    total: int
    done: int
    failed: int
    running: int = Field(default=0, description="items being protected now")
    fraction: float = Field(
        default=0.0, description="share of the job's work finished, in [0, 1]: finished items plus the running "
        "items' attack progress (their steps done), over the items"
    )


class ItemProgress(BaseModel):
    """Where a running item's attack is (updated about twice a second; shared by every replica)."""

    steps_done: int = Field(description="PGD steps finished")
    steps: int = Field(description="PGD steps this item runs")
    tiles_done: int = Field(description="tiles of the current step finished (tiled attack; 1 of 1 untiled)")
    tiles: int = Field(description="tiles per step (1: untiled)")
    fraction: float = Field(description="share of this item's attack finished, in [0, 1]")
    eta_s: float | None = Field(default=None, description="seconds left at the pace so far")


class JobItem(BaseModel):
    index: int = Field(description="position of the file in the upload")
    filename: str = Field(description="uploaded file name, sanitised (never used as a path)")
    status: JobStatus
    error: str | None = Field(default=None, description="why the item failed or was cancelled")
    certificate: Certificate | None = None
    download_url: str | None = Field(default=None, description="where to download the protected image")
    output: str = Field(
        default="",
        description="file name of the protected image in its download and in the job zip (its certificate is "
        "`<output>.json` there): the uploaded name with the output suffix; colliding names made distinct",
    )
    progress: ItemProgress | None = Field(default=None, description="the attack's progress while the item runs")


class Job(BaseModel):
    id: str
    status: JobStatus
    total: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = Field(description="when the results are deleted (set once finished)")
    settings: dict[str, Any] = Field(description="the parameters every item is protected with")
    progress: JobProgress
    error: str | None = None
    items: list[JobItem]


class ModelInfo(BaseModel):
    name: str
    device: str
    dtype: str
    latent_channels: int
    downsample_factor: int
    posterior: str = Field(description="gaussian (mean and variance) or deterministic (the latent itself)")
    parameters: int = Field(description="encoder parameters")
    decoder_loaded: bool = Field(description="round-trip diagnostics available")


class EnsembleInfo(BaseModel):
    name: str = Field(description="the members' names, comma-separated")
    padding_multiple: int = Field(description="least common multiple of the members' spatial factors")
    aggregation: str = Field(description="default aggregation of the normalised member losses (mean | worst)")
    aggregations: list[str] = Field(description="aggregations a request may choose (form field aggregation)")
    weights: dict[str, float] = Field(
        description="default weight of each member for 'mean' (normalised to sum 1; model_weights overrides)"
    )


class PresetInfo(BaseModel):
    name: str
    target_variance: float | None
    direction: str
    summary: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_steps: int
    max_files_per_job: int
    queue_size: int
    max_batch: int
    request_timeout_s: float
    job_retention_s: float
    formats: list[str]


class ModelsResponse(BaseModel):
    model: ModelInfo = Field(description="the loaded model (of an ensemble: its first member)")
    members: list[ModelInfo] = Field(description="every attacked model, in list order (one for a single model)")
    ensemble: EnsembleInfo | None = Field(default=None, description="the ensemble as a whole (None: one model)")
    default_preset: str
    presets: list[PresetInfo]
    limits: Limits
    version: str
    warning: str | None = Field(
        default=None,
        description="set when the loaded model cannot protect against real editors (the bundled demo VAE): "
        "what to tell users, and which model to load instead; null for real encoders",
    )
    generator_id: str | None = Field(
        default=None,
        description="fast modes (mode fast / fast+N) are available when set: the id of this server's generator "
        "(first 12 hex digits of its weights' SHA-256, as certificates record it); null: only mode pgd",
    )


class ChannelStats(BaseModel):
    channel: int = Field(description="latent channel index")
    mu_mean: float = Field(description="spatial mean of the posterior mean mu in this channel")
    mu_std: float = Field(description="spatial standard deviation of mu")
    mu_abs_max: float = Field(description="largest |mu|")
    var_mean: float = Field(description="spatial mean of the posterior variance sigma^2")
    logvar_mean: float = Field(description="spatial mean of log sigma^2 (clamped to [-30, 20])")


class PosteriorStats(BaseModel):
    """How the encoder sees one image: q(z|x) = N(mu, diag sigma^2)."""

    kl_prior: float | None = Field(
        description="KL(q(z|x) || N(0, I)) per latent element (nats). Small = close to the prior; "
        "a collapsed (pca-) posterior has large KL to N(0,I) because its variance is tiny"
    )
    kl_to_target: dict[str, float | None] = Field(
        description="KL per latent element to each preset's target N(0, v I) (the 'adaptive' preset has no "
        "fixed target and is omitted). The preset that protected an image drives its value down"
    )
    mu_rms: float | None = Field(description="root-mean-square of mu; a collapsed posterior has mu near 0")
    logvar_mean: float | None = Field(description="mean log sigma^2 over the latent")
    latent_shape: list[int] = Field(description="(channels, height, width) of the latent")
    channels: list[ChannelStats] = Field(description="per latent channel summaries")
    roundtrip_psnr_db: float | None = Field(
        default=None,
        description="PSNR (dB) of decode(mu) against the clean image: how well the VAE reconstructs it. "
        "Low for a protected image = edits start from a damaged latent. Null without a decoder "
        "(or when identical)",
    )


class Diagnostics(BaseModel):
    """Posterior statistics of one image, or of a clean/protected pair."""

    model: str = Field(description="VAE whose encoder was queried")
    decoder_loaded: bool = Field(description="whether round-trip PSNR could be measured")
    width: int
    height: int
    image: PosteriorStats = Field(description="statistics of `file` (the clean image of a pair)")
    protected: PosteriorStats | None = Field(
        default=None, description="statistics of `protected` (round-trip PSNR measured against `file`)"
    )
    latent_drift: float | None = Field(
        default=None, description="||mu(protected) - mu(clean)|| / ||mu(clean)||; pairs only"
    )
    linf_255: float | None = Field(default=None, description="max pixel difference on the 0-255 scale")
    l2_255: float | None = Field(default=None, description="Euclidean norm of the difference, 0-255 scale")
    redteam: dict[str, Any] | None = Field(
        default=None,
        description="with `redteam=true` on a pair: for each publishing channel (JPEG, WebP, resize, blur, "
        "noise, cleaner, VAE purification), the latent drift after the channel and its retention "
        "(drift after / drift before; 1 = protection kept, 0 = erased) — pca_attack.redteam",
    )


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)
