"""The layering the docs promise (docs/actors.md, docs/README.md), checked on the source:

- core/ (plain logic) imports no actors/ and no tools/;
- messages/ imports no actors/ and no tools/;
- actors/ import no tools/;
- nothing the signer runs (system.py, actors/, core/, messages/) imports tools/ (the
  client, the admin tool and the WebDB daemon are separate programs), and the WebDB
  daemon (tools/webdb/) imports none of the signer's runtime (actors/, thespian, PyKCS11,
  nats): its box installs only the `webdb` extra.

Every `import` and `from ... import` statement counts, also inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources(*folders: str) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        target = ROOT / folder
        files.extend([target] if target.is_file() else sorted(target.rglob("*.py")))
    return files


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {module}"
            for path in files for module in sorted(imported_modules(path))
            if any(module == f or module.startswith(f + ".") for f in forbidden)]


RULES = [
    ("core imports no actors or tools", ("core",), ("actors", "tools")),
    ("messages import no actors or tools", ("messages",), ("actors", "tools")),
    ("actors import no tools", ("actors",), ("tools",)),
    ("the signer's start-up imports no tools", ("system.py",), ("tools",)),
    ("the WebDB daemon imports none of the signer's runtime", ("tools/webdb",),
     ("actors", "system", "thespian", "PyKCS11", "nats", "pkilint", "core.hsm", "core.repository", "core.sync",
      "core.dev")),
]


@pytest.mark.parametrize("folders, forbidden", [(f, x) for _, f, x in RULES],
                         ids=[name for name, _, _ in RULES])
def test_import_rule(folders: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    files = sources(*folders)
    assert files, f"no sources under {folders}"
    assert violations(files, forbidden) == []


def test_the_rule_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tools.client.library import SignerClient\n")
    assert imported_modules(bad) == {"tools.client.library"}
