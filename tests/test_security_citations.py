"""SECURITY.md (and README.md) cite tests as evidence: `test_x.py::test_y`, a following
`::test_z` of the same module on the same line, or a whole `tests/test_x.py` (or
`tests/unit/test_x.py`). Every cited test must exist and be collected by pytest, so a
renamed or deleted test cannot leave a security claim pointing at nothing (issue #9 item 6)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT

CITING = ("SECURITY.md", "README.md")
CITATION = re.compile(r"(?:tests/)?((?:unit/)?test_\w+\.py)(?:::(test_\w+))?|::(test_\w+)")


def cited_tests() -> set[tuple[str, str | None, str]]:
    """(module, test name or None for the whole module, where cited) for every citation."""
    found: set[tuple[str, str | None, str]] = set()
    for document in CITING:
        text = (ROOT / document).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            module = None
            for match in CITATION.finditer(line):
                where = f"{document}:{number}"
                if match.group(1):
                    module = match.group(1)
                    found.add((module, match.group(2), where))
                else:
                    assert module, f"{where}: '::{match.group(3)}' names no module before it"
                    found.add((module, match.group(3), where))
    return found


def collected_tests() -> set[str]:
    """Node ids pytest collects from tests/, parameters stripped: 'test_x.py::test_y'."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n0", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ids = set()
    for line in result.stdout.splitlines():
        if line.startswith("tests/") and "::" in line:
            ids.add(line.removeprefix("tests/").split("[", 1)[0])
    return ids


def test_every_test_cited_by_security_md_exists_and_is_collected():
    cited = cited_tests()
    assert len({c for c in cited if c[1]}) >= 30  # the parser still finds the citations
    collected = collected_tests()
    modules = {node.split("::", 1)[0] for node in collected}
    missing = sorted(
        f"{where}: {module}" + (f"::{name}" if name else "")
        for module, name, where in cited
        if (f"{module}::{name}" not in collected if name else module not in modules)
    )
    assert not missing, "cited but not collected:\n" + "\n".join(missing)
