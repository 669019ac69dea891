"""The house rules the code layout keeps: no module over 450 lines, no import circle between the
package's modules (imports inside functions included), and no import from a subpackage back up
into the modules that use it (pipeline, api, the entry points)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_promptopt"
TOP = {"api", "pipeline", "lm_eval_flags", "cli", "hook", "__main__"}
"""The door and the stage: they use the subpackages; nothing below imports them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package's modules that `path` imports, wherever the import statement stands."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(filter(None, [base, node.module]))
            for alias in node.names:
                found.add(
                    f"{target}.{alias.name}"
                    if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                    else target
                )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {t for t in found if t.split(".")[0] == "lm_eval_promptopt" and t != name}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_is_over_450_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long


def test_no_import_circle():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(m for m in GRAPH if m in reach(m))
    assert not circles


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.count(".") >= 2))
def test_subpackages_do_not_import_the_door_or_the_stage(module: str):
    assert not {t for t in GRAPH[module] if t.split(".")[1] in TOP}
