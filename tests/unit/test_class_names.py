"""Top-level class names are unique across ``src/zeitwork`` (issue 15): two classes of one name
in different packages make tracebacks, logs, imports and a grep ambiguous. A name may be shared
only with a reason in ``SHARED``; a stale entry fails too."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "zeitwork"

# name -> why two modules define it
SHARED: dict[str, str] = {}


def top_level_classes(root: Path = SRC) -> dict[str, list[str]]:
    """Class name -> the modules (dotted) that define a class of that name at their top level
    (in the module body, or in an ``if`` / ``try`` block of it)."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        body = list(ast.parse(path.read_text(), str(path)).body)
        while body:
            node = body.pop()
            if isinstance(node, ast.ClassDef):
                found[node.name].append(module)
            elif isinstance(node, ast.If | ast.Try):
                body.extend(node.body + node.orelse)
                if isinstance(node, ast.Try):
                    body.extend(node.finalbody)
                    for handler in node.handlers:
                        body.extend(handler.body)
    return found


def test_no_two_top_level_classes_share_a_name() -> None:
    shared = {
        name: sorted(modules)
        for name, modules in top_level_classes().items()
        if len(modules) > 1 and name not in SHARED
    }
    assert shared == {}, "rename one of each (or give the reason in SHARED)"


def test_every_shared_name_is_still_shared() -> None:
    found = top_level_classes()
    assert [name for name in SHARED if len(found.get(name, ())) < 2] == []


def test_the_check_sees_duplicates(tmp_path: Path) -> None:
    package = tmp_path / "zeitwork"
    (package / "a").mkdir(parents=True)
    (package / "a" / "one.py").write_text("class Twin:\n    pass\n")
    (package / "two.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    class Twin: ...\n"
    )
    (package / "three.py").write_text("def f():\n    class Twin: ...\n")  # not top level
    assert top_level_classes(package)["Twin"] == ["zeitwork.a.one", "zeitwork.two"]
