"""docs/INTERFACES.md is true to the code: every name it writes as a call in a code span (``Name(...)``,
``module.function(...)``, ``method(...)``) exists in the packages."""

import builtins
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asr", "streaming", "server", "recipes", "blockasr")


def _modules():
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, name + "."):
            if not info.name.endswith("__main__"):  # running it would run the command line
                yield importlib.import_module(info.name)


def _known_names() -> set[str]:
    """Every module-level name of the packages, and every attribute and field of their classes."""
    known = set(dir(builtins))
    for module in _modules():
        known.add(module.__name__.rsplit(".", 1)[-1])
        for name, value in vars(module).items():
            known.add(name)
            if inspect.isclass(value):
                known.update(dir(value))
                if dataclasses.is_dataclass(value):
                    known.update(f.name for f in dataclasses.fields(value))
    return known


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_called_name_exists():
    text = (ROOT / "docs" / "INTERFACES.md").read_text()
    spans = re.findall(r"`([^`]+)`", text)
    known = _known_names()
    missing = []
    for span in spans:
        for dotted in re.findall(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(", span):
            if dotted.split(".")[0] in PACKAGES:
                ok = _resolve(dotted)
            else:
                ok = all(part in known for part in dotted.split("."))
            if not ok:
                missing.append(f"{dotted}  (in `{span}`)")
    assert not missing, "docs/INTERFACES.md names what the code lacks:\n" + "\n".join(missing)
    assert len(spans) > 100  # the check looked at the document
