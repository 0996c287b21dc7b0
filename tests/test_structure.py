"""The package's structure: no module reaches into another's private names, no module is over
500 lines, and the method layer stands on its own (sfn_teach/__init__.py's module map)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sfn_teach"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 500

METHOD = ("series", "hvp", "scale", "update", "optim", "kfac", "registry", "models", "checks")
"""The method layer (the module map of sfn_teach/__init__.py): it imports no module of the
classroom or the experiments."""


def name(path: Path) -> str:
    """``sfn_teach.bench.config`` for ``sfn_teach/bench/config.py``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_module(path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module an ``from … import`` names."""
    if not node.level:
        return node.module or ""
    package = name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def package_imports(path: Path, source: str):
    """``(line, module, imported name or None, bound name)`` of every import of sfn_teach."""
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom):
            module = imported_module(path, node)
            if module == "sfn_teach" or module.startswith("sfn_teach."):
                for alias in node.names:
                    yield node.lineno, module, alias.name, alias.asname or alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sfn_teach"):
                    yield node.lineno, alias.name, None, alias.asname or alias.name


def is_module(dotted: str) -> bool:
    """Whether ``sfn_teach.x.y`` is a module or package of sfn_teach."""
    relative = PACKAGE.parent.joinpath(*dotted.split("."))
    return relative.with_suffix(".py").exists() or (relative / "__init__.py").exists()


def is_private(identifier: str) -> bool:
    return identifier.startswith("_") and not identifier.startswith("__")


def private_uses(path: Path, source: str) -> list:
    """Where ``source`` (the module at ``path``) imports a private name of another module,
    ``from .x import _y``, or reads one from an imported module, ``x._y``."""
    imports = list(package_imports(path, source))
    offences = [f"{path.name}:{line}: from {module} import {imported}"
                for line, module, imported, _ in imports if imported and is_private(imported)]
    modules = {bound for _, module, imported, bound in imports
               if imported is None or is_module(f"{module}.{imported}")}
    for node in ast.walk(ast.parse(source, str(path))):
        if (isinstance(node, ast.Attribute) and is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            offences.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return offences


@pytest.mark.parametrize("path", MODULES, ids=name)
def test_no_module_imports_another_modules_private_name(path):
    offences = private_uses(path, path.read_text())
    assert not offences, "private names of other modules: " + "; ".join(offences)


def test_the_check_sees_private_imports_and_attributes():
    path = PACKAGE / "registry.py"
    source = path.read_text() + "\nfrom .optim import _DenseCurvatureOptimizer\n"
    assert private_uses(path, source)[-1].endswith("from sfn_teach.optim import "
                                                   "_DenseCurvatureOptimizer")
    source = "from sfn_teach import series\nseries._coefficients_table()\n"
    assert private_uses(PACKAGE / "toys.py", source) == ["toys.py:2: series._coefficients_table"]


@pytest.mark.parametrize("path", MODULES, ids=name)
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name(path)}: {lines} lines (at most {MAX_LINES}): split it by job"


@pytest.mark.parametrize("module", METHOD)
def test_the_method_imports_nothing_from_the_classroom_or_the_experiments(module):
    path = PACKAGE / f"{module}.py"
    others = sorted({imported_from for _, imported_from, _, _ in package_imports(
                         path, path.read_text())
                     if imported_from.removeprefix("sfn_teach.") not in METHOD})
    assert not others, f"sfn_teach.{module} imports {others}, outside the method layer"
