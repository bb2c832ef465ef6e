"""Every document the code or the README points to is in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REF = re.compile(r"\bdocs/[A-Za-z_]+\.md\b")


def test_referenced_docs_exist():
    sources = [p for d in ("asr", "streaming", "server", "recipes", "blockasr", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    sources += [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    refs = {(m.group(0), p.relative_to(ROOT).as_posix()) for p in sources for m in _REF.finditer(p.read_text())}
    assert any(ref == "docs/PROTOCOL.md" for ref, _ in refs)
    missing = sorted(f"{where}: {ref}" for ref, where in refs if not (ROOT / ref).is_file())
    assert not missing, missing


def test_no_bare_design_reference():
    """The design lives in docs/DESIGN.md; a bare "DESIGN.md" pointed outside the repository."""
    bare = re.compile(r"(?<!docs/)\bDESIGN\.md")
    offenders = [p.relative_to(ROOT).as_posix() for d in ("asr", "streaming", "server", "recipes", "blockasr")
                 for p in (ROOT / d).rglob("*.py") if bare.search(p.read_text())]
    assert not offenders, offenders
