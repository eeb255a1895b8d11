"""`rlhfkit <command> --help` read from the source, without importing the command's module.

A stage module imports torch and transformers (seconds); its `Config` is a plain dataclass whose fields,
defaults and one-line comments are all in the source. This reads them with `ast`: fields of the class and
its bases, literal defaults (strings, numbers, None, lists, dicts, tuples), `field(default_factory=...)` of
`list`/`dict`/a lambda returning a literal, nested dataclass sections (followed through `from ... import`),
and names bound to literals at module level. Anything else raises `Unreadable`, and the CLI falls back
to importing the module (tests/test_cli_help.py checks both give the same text for every command).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import lru_cache


class Unreadable(Exception):
    """The source does not say the default plainly; import the module instead."""


def help_lines(module: str, cls_name: str, prefix: str = "") -> list[str]:
    """The lines `cli.field_help` prints for `module.cls_name`, read from source."""
    out = []
    for name, (default, doc, section) in _fields(module, cls_name).items():
        if section is not None:
            out += help_lines(*section, prefix + name + ".")
        else:
            out.append(f"  --{prefix}{name}={default!r:<24} {doc}")
    return out


@lru_cache(maxsize=None)
def _tree(module: str) -> tuple[ast.Module, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise Unreadable(module)
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    return ast.parse(source), source


def _fields(module: str, cls_name: str) -> dict[str, tuple]:
    """name -> (default, comment, (module, class) of a nested section or None), bases' fields first."""
    tree, source = _tree(module)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
    if cls is None:
        module, cls_name = _imported(tree, cls_name, module)
        return _fields(module, cls_name)
    fields: dict[str, tuple] = {}
    for base in cls.bases:
        if not isinstance(base, ast.Name):
            raise Unreadable(ast.unparse(base))
        fields.update(_fields(*_where(tree, module, base.id)))
    lines = "\n".join(source.splitlines()[cls.lineno - 1 : cls.end_lineno])  # whole lines: the last field's comment too
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", lines, re.M))
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            if node.target.id == "BASE_CONFIGS":
                raise Unreadable("defaults come from config files")
            continue
        name = node.target.id
        default, section = _default(node.value, tree, module)
        doc = comments.get(name, fields.get(name, (None, "", None))[1])  # a subclass's comment wins over its base's
        fields[name] = (default, doc, section)
    return fields


def _default(value, tree, module):
    """(default, None) or (None, (module, class)) of a nested section."""
    if value is None:
        raise Unreadable("a field without a default")
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field"):
        kw = {k.arg: k.value for k in value.keywords}
        if "default" in kw:
            return _literal(kw["default"], tree), None
        factory = kw.get("default_factory")
        if isinstance(factory, ast.Name) and factory.id in ("list", "dict"):
            return {"list": [], "dict": {}}[factory.id], None
        if isinstance(factory, ast.Lambda):
            return _literal(factory.body, tree), None
        if isinstance(factory, ast.Name):
            return None, _where(tree, module, factory.id)
        raise Unreadable(ast.unparse(value))
    return _literal(value, tree), None


def _literal(node, tree):
    """A literal default, or a module-level name bound to one."""
    if isinstance(node, ast.Name):
        bound = [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None
                 and any(isinstance(t, ast.Name) and t.id == node.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
        if len(bound) != 1:
            raise Unreadable(node.id)
        node = bound[0]
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise Unreadable(ast.unparse(node)) from None


def _where(tree, module: str, name: str) -> tuple[str, str]:
    """(module, class) that `name` names in `module`: defined there, or imported from elsewhere."""
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return module, name
    return _imported(tree, name, module)


def _imported(tree, name: str, module: str) -> tuple[str, str]:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return node.module, alias.name
    raise Unreadable(f"{name} in {module}")
