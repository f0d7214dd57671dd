"""The in-process processor of ``pca-protect batch --local``: one ``Engine`` behind a lock (the engine is
not re-entrant). It lives in the application layer because it imports the engine; ``pca_client`` stays
torch-free. With an ``ImageProgress`` attached it prints each image's plan and drives a per-step bar."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pca_attack.options import ProtectOptions


class EngineProcessor:
    """``(path, data) -> (bytes, suffix, certificate)`` with the in-process engine."""

    def __init__(self, engine: Any, options: ProtectOptions, generator: str | None = None) -> None:
        self.engine = engine
        self.config = options.to_attack_config().with_(generator=generator)  # generator: fast modes' weights
        self.output = options.output()
        self.steps: Any = None  # an ImageProgress (pca_cli.progress), set while a progress display is live
        self._lock = threading.Lock()

    def __call__(self, path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
        with self._lock:
            steps = self.steps
            if steps is None:
                out = self.engine.protect_bytes(data, self.config, **self.output)
            else:
                steps.start(path.name)
                try:
                    out = self.engine.protect_bytes(
                        data, self.config, **self.output, on_plan=steps.on_plan, progress=steps.on_step
                    )
                finally:
                    steps.done()
        return out.data, out.suffix, out.certificate.model_dump(mode="json")


def local_processor(
    options: ProtectOptions, model: str | list[str], device: str, dtype: str, max_memory: int | None = None,
    offline: bool = False, generator: Path | None = None,
) -> EngineProcessor:
    """Load the model (no decoder: the batch needs none) within the memory budget and wrap it; a fast mode's
    generator is checked against the model first (``--generator``: exit 2 when unusable)."""
    import sys

    from pca_attack.models.registry import DEMO_WARNING, uses_demo
    from pca_attack.pipeline import Engine
    from pca_cli.options import fast_generator

    spec = model if isinstance(model, str) else ",".join(model)  # batch: a list of --model values
    engine = Engine.from_spec(spec, device=device, dtype=dtype, with_decoder=False, max_batch=1,
                              max_memory=max_memory, offline=offline or None)
    if uses_demo(engine.model_names()):
        print(f"warning: {DEMO_WARNING}", file=sys.stderr)
    return EngineProcessor(engine, options, fast_generator(generator, engine.encoder, options.mode))
