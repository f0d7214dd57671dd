"""Service settings, read from ``PCA_*`` environment variables (or passed to ``create_app``).

Every value is validated when the settings are built, so a bad value fails the start with a message
instead of a surprise under load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pca_attack.models.registry import DEFAULT_MODEL

Dtype = Literal["auto", "fp32", "float32", "fp16", "float16", "half", "bf16", "bfloat16"]


class Settings(BaseSettings):
    """Configuration of one service process (one model, one engine worker)."""

    model_config = SettingsConfigDict(env_prefix="PCA_", extra="ignore", validate_default=True)

    model: str = Field(
        default=DEFAULT_MODEL, min_length=1,
        description="registry name, diffusers folder or weights file; several (a comma list) are attacked at once",
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N | mps (explicit devices must exist)")
    dtype: Dtype = Field(default="auto", description="encoder dtype; auto = fp16 on CUDA, fp32 elsewhere")
    offline: bool | None = Field(default=None, description="never touch the network (None: follow HF_HUB_OFFLINE)")
    with_decoder: bool = Field(default=True, description="also load the decoder for round-trip diagnostics")

    data_dir: Path = Field(default=Path("data"), description="uploads, results and the default SQLite database")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/jobs.db")

    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="largest accepted file, in bytes")
    max_pixels: int = Field(default=40_000_000, ge=64, description="largest accepted image, width x height")
    max_memory: str | None = Field(
        default=None,
        description="memory the process may use, e.g. 6GB (default: what it holds + 15% of the free RAM/VRAM at "
        "start-up); images over it are protected in tiles, one that cannot fit even so is answered 413",
    )
    max_files_per_job: int = Field(default=64, ge=1, le=10_000, description="files accepted by one POST /v1/jobs")
    max_steps: int = Field(default=200, ge=1, le=10_000, description="cap on the PGD steps a request may ask for")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API keys (comma-separated in the env); empty = open"
    )
    admin_key: str | None = Field(
        default=None,
        min_length=8,
        description="a key that also sees and deletes every client's jobs (jobs otherwise belong to the key "
        "that created them; other keys get 404)",
    )

    queue_size: int = Field(default=16, ge=1, le=100_000, description="engine requests waiting at most")
    max_batch: int = Field(default=4, ge=1, le=256, description="same-size images protected in one micro-batch")
    request_timeout_s: float = Field(default=300.0, gt=0, description="longest a /v1/protect request may wait")
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 429/503 answers")
    job_retention_s: float = Field(default=86_400.0, gt=0, description="finished jobs are deleted after this long")
    cleanup_interval_s: float = Field(default=60.0, gt=0, description="how often expired jobs are looked for")

    limit_concurrency: int = Field(
        default=200, ge=2, le=100_000,
        description="open connections + running requests at most; a request over it is answered 503 "
        "(applied by pca-protect serve)",
    )
    header_timeout_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="a connection must deliver the complete request headers within this many seconds of opening "
        "(or of its previous answer), else it is closed (applied by pca-protect serve)",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="an idle keep-alive connection is closed after this many seconds"
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=4096, le=1024 * 1024,
        description="largest request line + headers, in bytes; larger ones are answered 431 (400 when they "
        "arrive in pieces) and the connection is closed",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="longest wait for the next piece of a request body; with min_body_rate it bounds slow "
        "uploads (answered 408 and closed)",
    )
    min_body_rate: int = Field(
        default=1024, ge=0,
        description="bytes per second a request body must keep up after its first body_timeout_s (0: no floor)",
    )

    generator: Path | None = Field(
        default=None,
        description="fast modes (mode fast / fast+N): generator weights file (.safetensors written by "
        "scripts/train_generator.py for this model), set by the operator; requests never name a path. Default: "
        "the generator shipped for the model (taef2 and demo); the start is refused when the file is missing, is not "
        "a generator or was trained for another model",
    )

    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="critical, error, warning, info or debug"
    )

    @field_validator("max_memory")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        """PCA_MAX_MEMORY must be a size the engine understands (1.5GB, 800MB, 2GiB)."""
        if value:
            from pca_attack.attack.memory import parse_size

            try:
                parse_size(value)
            except ValueError as exc:
                raise ValueError(str(exc)) from exc
        return value or None

    @field_validator("generator")
    @classmethod
    def _generator_file(cls, value: Path | None) -> Path | None:
        """PCA_GENERATOR must name an existing file (whether it suits the model is checked once it is loaded)."""
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file; give the path of generator weights (.safetensors) written by "
                             "scripts/train_generator.py, or unset PCA_GENERATOR")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _join_models(cls, value: Any) -> Any:
        """Several models (a list, or a comma list in PCA_MODEL) are attacked at once: kept as 'a,b'."""
        parts = value if isinstance(value, list | tuple) else str(value).split(",") if value is not None else []
        names = [str(part).strip() for part in parts if str(part).strip()]
        if len(set(names)) < len(names):
            raise ValueError(f"a model is listed twice in {','.join(names)!r}; list each model once")
        return ",".join(names) if names else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 8:
                raise ValueError("each API key must be at least 8 characters long")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        name = value.strip().lower()
        base, _, index = name.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return name

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'jobs.db'}"
        elif "://" not in self.database_url:
            raise ValueError(f"database_url {self.database_url!r} is not a SQLAlchemy URL (e.g. sqlite:///x.db)")
        return self

    @property
    def db_url(self) -> str:
        """The database URL (always set after validation)."""
        assert self.database_url is not None
        return self.database_url

    def redacted(self) -> dict[str, Any]:
        """Settings for logs: API keys counted, database password hidden."""
        data = self.model_dump(mode="json")
        data["api_keys"] = f"{len(self.api_keys)} key(s)"
        data["admin_key"] = "set" if self.admin_key else None
        url = self.db_url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            data["database_url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return data
