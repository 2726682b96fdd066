"""Print the first-party import graph of the `mobilesam` package and the import cycles in it.

    python scripts/import_graph.py [PACKAGE_DIR]      # default: core/mobilesam next to this script

Static (ast, nothing is imported): every `import` / `from ... import` counts, including those inside
functions (lazy imports still tie modules together); relative imports are resolved. `from pkg import
name` is an edge to `pkg.name` when that is a module, else to `pkg`. A package's `__init__` is the
node `pkg`. Imports by string count too: `importlib.import_module("a.b")` (an f-string
"pkg.{name}" is an edge to every module directly in pkg) and the `lazy_attributes(__name__, {...})`
tables of PEP 562 packages. Imports under `if TYPE_CHECKING:` never run and are left out. Cycles are the strongly connected components with more than one module (or a module
importing itself). Exit status 0 either way: this is a report, tests assert what must hold.
"""

import argparse
import ast
import sys
from pathlib import Path

DEFAULT_PACKAGE = Path(__file__).resolve().parents[1] / "core" / "mobilesam"


def module_names(package_dir: Path) -> dict[str, Path]:
    """{"mobilesam.cli": path, "mobilesam.onnx": path/to/__init__.py, ...} for every .py file."""
    root = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """`from ..x import y` inside `module` -> absolute name of `..x`."""
    base = module.split(".")
    if not is_package:
        base.pop()  # a module's own package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """First-party modules that `module` (source at `path`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()

    def add(name: str) -> None:
        # `import a.b.c` binds `a` and runs a, a.b, a.b.c: the deepest first-party one is the edge.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    module_dicts = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    package = module if is_package else module.rpartition(".")[0]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Call):
            for name in _string_imports(node, package, module_dicts, modules):
                add(name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(candidate if candidate in modules else base)
    found.discard(module)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST):
    """ast.walk, minus the bodies of `if TYPE_CHECKING:` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _string_imports(node: ast.Call, package: str, module_dicts: dict, modules: dict[str, Path]) -> list[str]:
    """Modules a call imports by name: import_module("x") / import_module(f"pkg.{name}") /
    lazy_attributes(__name__, {"attr": "submodule"})."""
    name = _call_name(node)
    if name in ("import_module", "__import__") and node.args:
        arg = node.args[0]
        anchor = node.args[1] if len(node.args) > 1 and name == "import_module" else None
        if anchor is not None and getattr(anchor, "id", None) not in ("__name__", "__package__"):
            return []  # relative to a package only known at run time (mobilesam._lazy's own mechanism)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if arg.value.startswith("."):
                return [package + arg.value]
            return [arg.value]
        if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            prefix = str(arg.values[0].value)
            if prefix.startswith("."):
                prefix = package + prefix
            if prefix.endswith("."):
                return [m for m in modules if m.startswith(prefix) and "." not in m[len(prefix) :]]
    if name == "lazy_attributes" and len(node.args) == 2:
        table = node.args[1]
        if isinstance(table, ast.Name):
            table = module_dicts.get(table.id)
        if isinstance(table, ast.Dict):
            return [
                f"{package}.{value.value}"
                for value in table.values
                if isinstance(value, ast.Constant) and isinstance(value.value, str)
            ]
    return []


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = module_names(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one node, each sorted, largest first."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def cycle_edges(graph: dict[str, set[str]], component: list[str]) -> list[tuple[str, str]]:
    members = set(component)
    return [(a, b) for a in component for b in sorted(graph[a]) if b in members]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package_dir", nargs="?", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--edges", action="store_true", help="also print every edge")
    args = parser.parse_args(argv)
    graph = import_graph(args.package_dir)
    edges = sum(len(targets) for targets in graph.values())
    print(f"{len(graph)} modules, {edges} import edges")
    if args.edges:
        for module in sorted(graph):
            for target in sorted(graph[module]):
                print(f"  {module} -> {target}")
    components = strongly_connected_components(graph)
    print(f"{len(components)} cycles (strongly connected components)")
    for component in components:
        print(f"- {len(component)} modules: {', '.join(component)}")
        for a, b in cycle_edges(graph, component):
            print(f"    {a} -> {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
