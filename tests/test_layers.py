"""The packages form layers: asr (the library) < streaming < server; recipes use the library only;
the ``asr`` command dispatcher (blockasr) stands above all. A module never imports a layer above
its own, not even through an importlib string."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level packages it must not import
FORBIDDEN = {
    "asr": {"streaming", "server", "recipes", "blockasr"},
    "streaming": {"server", "recipes", "blockasr"},
    "server": {"recipes", "blockasr"},
    "recipes": {"streaming", "server", "blockasr"},
}
_DYNAMIC = {"import_module", "__import__", "find_spec"}


def _imports(source: str, here: list[str]) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, a module of package ``here`` (["asr", "cli"]),
    relative ones resolved; importlib calls with a constant name count as imports, with any other
    argument as ``<dynamic>``."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _DYNAMIC:
                arg = node.args[0] if node.args else None
                text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>"
                found.append((node.lineno, text))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path.read_text(), list(path.relative_to(ROOT).parts[:-1])):
            top = module.split(".")[0]
            if top in FORBIDDEN[package] or module == "<dynamic>":
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_the_walk_sees_every_kind_of_import():
    """The checker itself: plain, from, relative and importlib imports are all found."""
    source = ("import streaming\nfrom server import app\nfrom . import cli\nfrom ..x import y\n"
              "import importlib\nimportlib.import_module('recipes.tts')\nimportlib.import_module(name)\n"
              "def f():\n    from blockasr.cli import main\n")
    mods = sorted(m for _, m in _imports(source, ["asr", "cli"]))
    assert mods == sorted(["streaming", "server", "asr.cli", "asr.x", "importlib", "recipes.tts", "<dynamic>",
                           "blockasr.cli"])
