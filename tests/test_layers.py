"""The data path runs one way: a module may import its own layer and the layers below it, never one above.

Layers, lowest first (DESIGN.md): errors/modes/io → data → models → losses/metrics → bundle → convert → training →
inference → instances → evaluation/report (and the Keras-style ``keras_model``) → cli. ``viz`` is a leaf that
any layer may use; it may itself import only the two lowest layers. Every ``import`` counts, at module level
and inside functions alike: an import inside a function is no way around the order.

The research studies (``pixelwise_experiments``, in the repository's ``experiments/`` folder) sit outside
the package, above all of it: no pixelwise module imports them, and their own modules import one way too
(no cycle among them).

``KNOWN_BACK_IMPORTS`` lists the back-imports that the restructuring of issue 19 has not removed yet.
The test fails on any back-import not in the list, and on a listed one that no longer exists, so the
list can only shrink.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pixelwise"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "pixelwise_experiments"
LAYERS = [
    ("errors", "modes", "io", "_version"),
    ("data",),
    ("models",),
    ("losses", "metrics"),
    ("bundle",),
    ("convert",),
    ("training",),
    ("inference",),
    ("instances",),
    ("evaluate", "evaluation", "report", "demo", "keras_model"),
    ("cli", "__init__", "__main__"),
]
LEAVES = {"viz": 1}
"""Modules any layer may import, with the highest layer they may import themselves."""
KNOWN_BACK_IMPORTS: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside the package (``pixelwise.data.folder`` → 1)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in LEAVES:
        return -1
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every pixelwise module ``path`` imports, anywhere in the file (relative imports resolved)."""
    source = module_name(path)
    package = source.rsplit(".", 1)[0] if path.name != "__init__.py" else source.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pixelwise"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.split(".")[0] != "pixelwise":
                continue
            if base == "pixelwise":  # `from pixelwise import data`: the submodule, else the root package
                found |= {
                    f"pixelwise.{a.name}"
                    if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()
                    else "pixelwise"
                    for a in node.names
                }
            else:
                found.add(base)
    return found


def back_imports() -> set[tuple[str, str]]:
    """``(importer, imported)`` pairs where a module imports from a higher layer."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        source_layer = layer_of(source)
        for target in imported_modules(path):
            target_layer = layer_of(target)
            if source_layer == -1:  # a leaf: only the lowest layers
                allowed = LEAVES[source.split(".")[1]]
                if target_layer > allowed:
                    found.add((source, target))
            elif target == "pixelwise" and source_layer < len(LAYERS) - 1:
                found.add((source, target))  # the root package imports everything
            elif target_layer > source_layer:
                found.add((source, target))
    return found


def test_no_module_imports_a_higher_layer():
    found = back_imports()
    new = sorted(found - KNOWN_BACK_IMPORTS)
    listed = "\n".join(f"  {a} → {b}" for a, b in new)
    assert not new, f"imports against the layer order (importer → imported):\n{listed}"


def test_the_list_of_known_back_imports_only_shrinks():
    gone = sorted(KNOWN_BACK_IMPORTS - back_imports())
    assert not gone, "these back-imports are gone: delete them from KNOWN_BACK_IMPORTS:\n" + "\n".join(
        f"  {a} → {b}" for a, b in gone
    )


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = PACKAGE / "data" / "_layer_probe.py"
    module.write_text("def late():\n    from pixelwise.training import run\n    return run\n")
    try:
        assert ("pixelwise.data._layer_probe", "pixelwise.training") in back_imports()
    finally:
        module.unlink()


def top_level_imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in the file (``from a import b`` gives ``a`` and
    ``a.b``: ``b`` may be a submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_pixelwise_never_imports_the_experiments():
    offenders = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == "pixelwise_experiments" for name in top_level_imports(path))
    )
    assert not offenders, f"the library imports the research add-on: {offenders}"


def test_the_experiments_import_one_way():
    modules = {f"pixelwise_experiments.{path.stem}": path for path in EXPERIMENTS.glob("*.py")}
    modules["pixelwise_experiments"] = modules.pop("pixelwise_experiments.__init__")
    graph = {name: {m for m in top_level_imports(path) if m in modules} - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " → ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*path, name))
        done.add(name)

    assert len(modules) > 5
    for name in sorted(graph):
        visit(name, ())
