"""The layout keeps its promises: who may import whom, and no room too big to read.

Layers (docs/architecture.md): ``pca_attack`` (engine) <- ``service`` (REST) <- ``pca_cli`` (app layer);
``pca_client`` (torch-free HTTP client + folder runner) uses only the engine's torch-free leaves. The theory
package ``pca_attack.analysis`` stands alone. Route modules never import each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pca_attack", "service", "pca_client", "pca_cli")
SIZE_CHECKED = (*PACKAGES, "benchmarks", "scripts")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# what each layer must never import (prefix match on absolute module names)
FORBIDDEN = {
    "pca_attack": ("service", "pca_client", "pca_cli"),
    "service": ("pca_cli", "pca_client"),
    "pca_client": ("service", "pca_cli", "torch", "pca_attack.attack", "pca_attack.models", "pca_attack.pipeline"),
}
# the torch-free engine leaves the client may use
CLIENT_ALLOWED_ENGINE = ("pca_attack.options", "pca_attack.io.files", "pca_attack.io.formats", "pca_attack.errors",
                         "pca_attack.io.names", "pca_attack._version", "pca_attack")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.append(node.module)
    return names


def _hits(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_the_layers_above_it(layer: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(layer)
        for name in _imports(path)
        if _hits(name, FORBIDDEN[layer])
    ]
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_the_client_uses_only_torch_free_engine_leaves() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("pca_client")
        for name in _imports(path)
        if name.startswith("pca_attack") and name not in CLIENT_ALLOWED_ENGINE
    ]
    assert not bad, "\n".join(bad)


def test_the_theory_package_imports_nothing_of_the_engine() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("pca_attack/analysis")
        for name in _imports(path)
        if name.startswith("pca_attack") and not name.startswith("pca_attack.analysis")
    ]
    assert not bad, "\n".join(bad)


def test_routes_never_import_routes() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("service/routes")
        if path.name != "__init__.py"  # the package gathers the routers; a route module never imports another
        for name in _imports(path)
        if name.startswith("service.routes")
    ]
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines() -> None:
    big = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for package in SIZE_CHECKED
        for path in _modules(package)
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, f"split these (limit {MAX_MODULE_LINES}):\n" + "\n".join(big)


def test_no_function_over_60_lines() -> None:
    long = []
    for package in SIZE_CHECKED:
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"split these (limit {MAX_FUNCTION_LINES}):\n" + "\n".join(long)


def test_every_module_has_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for package in SIZE_CHECKED
        for path in _modules(package)
        if path.read_text().strip() and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not missing, "add a module docstring to:\n" + "\n".join(missing)


def test_importing_the_engine_api_and_the_client_does_not_import_the_service() -> None:
    code = (
        "import sys, pca_attack, pca_client.http, pca_client.runner; "
        "from pca_attack import AttackConfig; "
        "bad = [m for m in sys.modules if m in ('service', 'pca_cli') or m.startswith(('service.', 'pca_cli.'))]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"loaded: {out.stdout}"
