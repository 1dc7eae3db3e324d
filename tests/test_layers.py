"""The layers import one way (medhall <- tasks <- flows <- deployments) and medhall has no
import circle: read from the source's import statements, as a reader would follow them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("medhall", "tasks", "flows", "deployments")  # each may import only those before it


def modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in (root / package).rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imported(name: str, path: Path) -> set[str]:
    """Absolute names of what module ``name`` imports (relative imports resolved), anywhere in it."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def upward_imports(layer: str, root: Path = ROOT) -> list[str]:
    above = LAYERS[LAYERS.index(layer) + 1 :] + (("prefect",) if layer == "medhall" else ())
    return sorted(
        f"{name} imports {target}"
        for name, path in modules(layer, root).items()
        for target in imported(name, path)
        if target.split(".")[0] in above
    )


def circles(root: Path = ROOT) -> list[list[str]]:
    mods = modules("medhall", root)

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {r for t in imported(m, p) if (r := resolve(t)) and r != m} for m, p in mods.items()}
    # a package importing its own submodules (or the reverse) is how packages are built, not a circle
    graph = {m: {t for t in ts if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                found.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_no_layer_above_it(layer: str) -> None:
    wrong = upward_imports(layer)
    assert not wrong, "imports against the layering (medhall <- tasks <- flows <- deployments):\n" + "\n".join(wrong)


def test_medhall_has_no_import_circle() -> None:
    found = circles()
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checks_find_a_planted_circle_and_upward_import(tmp_path: Path) -> None:
    pkg = tmp_path / "medhall"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medhall.sub import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..b import g\n")  # lazy and relative
    (pkg / "b.py").write_text("from . import a\nfrom flows.default import build_default\nimport prefect\n")
    assert circles(tmp_path) == [["medhall.a", "medhall.sub.c", "medhall.b", "medhall.a"]]
    assert upward_imports("medhall", tmp_path) == [
        "medhall.b imports flows.default", "medhall.b imports flows.default.build_default", "medhall.b imports prefect",
    ]
