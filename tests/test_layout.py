"""The architecture, checked: the library knows nothing of the built-in world or the demo, and stages
never import each other (STYLE.md: arrows point from demo/ and world/ into the library, never back)."""

from __future__ import annotations

import ast
import os

import rlhfkit

ROOT = os.path.dirname(rlhfkit.__file__)
APART = ("world", "demo")  # the only packages that may import the world / the demo


def imports(path: str) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against the package)."""
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    package = rel.rsplit(".", 1)[0] if not rel.endswith("__init__") else rel.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def library_files() -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(ROOT) for f in fs if f.endswith(".py")
            and os.path.relpath(d, ROOT).split(os.sep)[0] not in APART]


def test_nothing_outside_world_and_demo_imports_them():
    leaks = {os.path.relpath(p, ROOT): sorted(m for m in imports(p) if m.split(".")[:2] in (["rlhfkit", "world"], ["rlhfkit", "demo"]))
             for p in library_files()}
    assert {p: m for p, m in leaks.items() if m} == {}


def test_the_check_sees_an_import_of_the_world(tmp_path):
    """The walker is not blind: a planted import is found, absolute or relative."""
    planted = tmp_path / "x.py"
    planted.write_text("from rlhfkit.world import build_world\nimport rlhfkit.demo.pipeline\n")
    assert {"rlhfkit.world", "rlhfkit.demo.pipeline"} <= imports(str(planted))


def test_stages_never_import_each_other():
    folder = os.path.join(ROOT, "stages")
    names = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    found = {}
    for name in names:
        mods = imports(os.path.join(folder, f"{name}.py"))
        other = {m for m in mods if m.startswith("rlhfkit.stages.") and m.split(".")[2] in names - {name}}
        other |= {f"rlhfkit.stages.{a}" for a in names - {name} if f"rlhfkit.stages.{a}" in mods}
        if other:
            found[name] = sorted(other)
    assert found == {}


def test_the_feedback_package_has_no_import_cycle():
    folder = os.path.join(ROOT, "feedback")
    graph = {f[:-3]: {m.split(".")[2] for m in imports(os.path.join(folder, f)) if m.startswith("rlhfkit.feedback.")}
             for f in os.listdir(folder) if f.endswith(".py")}

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    assert [m for m in graph if reaches(m, m)] == []
