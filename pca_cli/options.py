"""Options shared by several subcommands (attack settings, model and device), with defaults shown."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Registry name (demo, sd15, sdxl, ...), diffusers folder or .safetensors.")
]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")]
PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="pca- (default), pca+, adaptive or pca-var.")]
EpsOpt = Annotated[float, typer.Option("--eps", "-e", help="Linf budget on the 0-255 scale.")]
StepOpt = Annotated[float, typer.Option("--step", help="PGD step on the 0-255 scale.")]
StepsOpt = Annotated[int, typer.Option("--steps", "-n", help="PGD iterations.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (deterministic on CPU).")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Output format: png (lossless), jpeg or webp.")]
QualityOpt = Annotated[int | None, typer.Option("--quality", "-q", help="JPEG/WebP quality 1-100.")]
EotOpt = Annotated[str | None, typer.Option("--eot", help="Expectation over transformations preset.")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")]
