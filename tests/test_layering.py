"""The package's layers (docs/architecture.md): every import points down, the core knows only
NumPy and Numba, and nothing but the console script (``bpdiag._entry``) imports the command
line."""

import ast
import sys
from pathlib import Path

import pytest

import bpdiag

PACKAGE = Path(bpdiag.__file__).parent

# Top to bottom. A module may import modules of its own layer and of the layers below it.
LAYERS = (
    ("console script", ("bpdiag._entry",)),
    ("cli", ("bpdiag.cli",)),
    ("studies", ("bpdiag.studies",)),
    ("sweep", ("bpdiag.sweep",)),
    ("public face", ("bpdiag.training", "bpdiag.history", "bpdiag.model", "bpdiag.gradcheck",
                     "bpdiag.hooks", "bpdiag.data", "bpdiag.blas", "bpdiag")),
    ("diagnostics", ("bpdiag.diagnostics",)),
    ("choices", ("bpdiag.choices",)),
    ("schema", ("bpdiag.schema",)),
    ("core", ("bpdiag._core",)),
)  # fmt: skip
THIRD_PARTY = {  # what each layer may import beyond the standard library and bpdiag
    "core": {"numpy", "numba", "llvmlite"},
    "schema": set(),
    "choices": {"numpy"},
    "diagnostics": {"numpy", "pandas", "matplotlib"},
    "public face": {"numpy", "numba", "pandas", "rich", "sklearn", "scipy", "threadpoolctl",
                    "llvmlite"},
    "sweep": {"numpy", "pandas", "matplotlib", "mlflow", "distributed", "pydantic", "yaml",
              "threadpoolctl"},
    "studies": {"numpy", "pandas", "matplotlib", "yaml"},
    "console script": set(),
    "cli": {"click", "rich", "numpy", "pandas"},
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """Index into LAYERS of the longest prefix that names ``module``."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)  # fmt: skip
    assert best is not None, module
    return best[1]


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # ``from bpdiag import data``: the submodule, if it is one
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / sub.replace(".", "/")).is_dir()  # fmt: skip
                out.append(sub if is_module else node.module)
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    here = _module_name(path)
    layer = _layer(here)
    name = LAYERS[layer][0]
    for target in _imports(path):
        top = target.split(".")[0]
        if top == "bpdiag":
            if target == "bpdiag.cli":
                assert here == "bpdiag._entry", f"{here} imports the command line"
            assert _layer(target) >= layer, f"{here} ({name}) imports {target} from above"
        elif top not in sys.stdlib_module_names and top != "__future__":
            assert top in THIRD_PARTY[name], f"{here} ({name}) imports {target}"


def test_every_module_has_a_layer():
    assert {_module_name(p) for p in MODULES} >= {"bpdiag._core.loop", "bpdiag.schema"}
    for path in MODULES:
        _layer(_module_name(path))
