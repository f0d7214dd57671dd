"""One options model: every interface (CLI, service form + OpenAPI, Python client, batch settings) derives
its protect options from ``pca_attack.options.ProtectOptions``; changing a bound there changes all of them."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import Field, ValidationError, create_model
from typer.testing import CliRunner

from pca_attack.attack.config import AttackConfig
from pca_attack.options import ATTACK_FIELDS, ProtectOptions, field_bounds
from pca_cli import app
from pca_cli.options import flags, option_parameters
from pca_client.http import PCAClient
from pca_client.manifest import settings_fingerprint
from pca_client.protocol import ProtectSettings
from service.deps import options_form

ROOT = Path(__file__).resolve().parents[1]
FIELDS = list(ProtectOptions.model_fields)
_JSON_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _cli_options(name: str) -> dict[str, Any]:
    """The options of a subcommand as the command line parser sees them."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def test_attack_defaults_are_the_engines() -> None:
    engine = {f.name: f.default for f in dataclasses.fields(AttackConfig)}
    for name in ATTACK_FIELDS:
        assert ProtectOptions.model_fields[name].default == engine[name], name
    assert ProtectOptions().to_attack_config() == AttackConfig()


def test_output_defaults_are_the_pipelines() -> None:
    from pca_attack.pipeline import Engine

    signature = inspect.signature(Engine.protect_bytes).parameters
    assert ProtectOptions().output() == {k: signature[k].default for k in ("fmt", "quality", "keep_exif")}


@pytest.mark.parametrize("command", ["protect", "batch", "redteam"])
def test_cli_options_are_the_models_fields(command: str) -> None:
    options = _cli_options(command)
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
    for name, info in ProtectOptions.model_fields.items():
        option = options[name]
        assert option.default == info.default, (command, name)
        assert (info.description or "")[1:] in (option.help or ""), (command, name)
        assert flags(name)[0].split("/")[0] in help_text, (command, name)
    assert "--strip-exif" in help_text and "--random-start" in help_text


def test_openapi_form_has_the_models_bounds_and_defaults() -> None:
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(data_dir=Path("/nonexistent/pca-test"))
    document = create_app(settings).openapi()
    for body in ("Body_protect-image", "Body_jobs-create"):
        properties = document["components"]["schemas"][body]["properties"]
        for name, info in ProtectOptions.model_fields.items():
            schema = properties[name]
            assert schema.get("default") == info.default, (body, name)
            assert schema["description"] == info.description, (body, name)
            flat = {k: v for s in [schema, *schema.get("anyOf", [])] for k, v in s.items()}
            for key, value in field_bounds(info).items():
                if (name, key) == ("steps", "le"):  # the served schema states this server's cap (max_steps)
                    value = min(value, settings.max_steps)
                assert flat[_JSON_BOUNDS.get(key, "maxLength")] == value, (body, name, key)


def test_client_settings_are_the_models_fields_all_optional() -> None:
    assert list(ProtectSettings.model_fields) == FIELDS
    for name, info in ProtectSettings.model_fields.items():
        model_info = ProtectOptions.model_fields[name]
        assert info.default is None and info.description == model_info.description
        assert field_bounds(info) == field_bounds(model_info)
    with pytest.raises(ValidationError):  # the client refuses what the server would refuse
        ProtectSettings(eps=65)
    with pytest.raises(TypeError):
        ProtectSettings().merged(unknown=1)
    assert ProtectSettings(format="JPG").form() == {"format": "jpeg"}
    signature = inspect.signature(PCAClient.protect)  # the sync client is the async one's twin
    assert "settings" in signature.parameters and "options" in signature.parameters


def test_batch_fingerprint_is_unchanged_by_the_model() -> None:
    """Folders protected before the options model are not redone: same settings, same fingerprint. Since the
    default editor resolution (1024) protects larger images differently, the old settings are those with it
    off (``--editor-resolution 0``); the new default is a new fingerprint, so a resumed batch redoes its files."""
    before = {
        "preset": "pca-", "eps": 16.0, "step": 2.0, "steps": 40, "seed": 3407, "random_start": False,
        "format": "png", "quality": None, "keep_exif": True, "eot": None,
    }
    assert settings_fingerprint(ProtectOptions(editor_resolution=0).settings()) == settings_fingerprint(before)
    assert settings_fingerprint(ProtectOptions().settings()) != settings_fingerprint(before)
    assert ProtectOptions().settings()["editor_resolution"] == 1024
    assert "eot_samples" in ProtectOptions(eot="jpeg-75").settings()


def _patched(**bounds: Any) -> type[ProtectOptions]:
    info = ProtectOptions.model_fields["eps"]
    field = Field(default=info.default, description=info.description, **bounds)
    return create_model("Patched", __base__=ProtectOptions, eps=(float, field))


def test_a_changed_bound_reaches_every_interface() -> None:
    patched = _patched(gt=0, le=8)
    form = inspect.signature(options_form(patched)).parameters["eps"]
    assert field_bounds(form.annotation.__metadata__[0]) == {"gt": 0, "le": 8}
    cli = next(p for p in option_parameters(patched) if p.name == "eps")
    assert "0 < x <= 8" in cli.annotation.__metadata__[0].help
    with pytest.raises(ValidationError):
        patched(eps=9)


def test_cli_refuses_out_of_bounds_values_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["protect", str(tmp_path), "-o", str(tmp_path / "o"), "--eps", "99"])
    assert result.exit_code == 2 and "--eps" in result.output


def test_the_client_is_torch_free() -> None:
    code = "import sys, pca_client.http, pca_client.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_editor_resolution_defaults_to_1024_and_0_turns_it_off() -> None:
    """Editors work at about 1 MP: larger images are also protected downscaled to 1024 px unless told not to
    (0 from a form or the command line, null in JSON); 1..63 is refused with what to use."""
    assert ProtectOptions().to_attack_config().editor_resolution == 1024
    assert ProtectOptions(editor_resolution=0).to_attack_config().editor_resolution is None
    assert ProtectOptions(editor_resolution=None).editor_resolution is None
    assert ProtectOptions.model_validate({"editor_resolution": "512"}).editor_resolution == 512  # form data
    with pytest.raises(ValidationError, match="0 \\(off\\) or a long side"):
        ProtectOptions(editor_resolution=10)
