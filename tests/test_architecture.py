"""The core's place in the house: front-ends plug into `mobilesam` (CLI subcommands through the
`mobilesam.commands` entry-point group), `mobilesam` never imports a front-end, statically or by
string, and its modules import each other without cycles."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib

from mobilesam.cli import PLUGIN_GROUP, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "mobilesam"
FRONT_END_MODULES = ("napari", "napari_mobilesam", "labelstudio_backend", "flask", "qtpy", "label_studio_sdk")
# Names that are code, never prose: forbidden in any string of the core, docstrings included.
_CODE_NAMES = re.compile(
    r"(?<![\w-])(napari_mobilesam|labelstudio_backend|label_studio_sdk|qtpy|flask)(?![\w-])"
)
# "napari" is also the application's name in prose ("the napari plugin"); as a module it looks like
# "napari", "napari.viewer" or "import napari".
_NAPARI_MODULE = re.compile(r"^\s*napari\s*$|(?<![\w-])napari\.[A-Za-z_]|\b(?:import|from)\s+napari\b")


def _load_import_graph_script():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plugin_distribution(root: Path, name: str, entry_points_txt: str, modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds it: NAME-1.0.dist-info with METADATA and
    entry_points.txt, plus its modules, all in `root` (which the caller puts on sys.path)."""
    dist_info = root / f"{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_an_installed_package_adds_a_subcommand(tmp_path, monkeypatch, capsys):
    _plugin_distribution(
        tmp_path,
        "hello_plugin",
        f"""
        [{PLUGIN_GROUP}]
        hello = hello_plugin_cli:register
        """,
        {
            "hello_plugin_cli": """
            def register(subparsers):
                p = subparsers.add_parser("hello", help="greet someone")
                p.add_argument("who")
                p.set_defaults(func=lambda args: print(f"hello {args.who}") or 3)
            """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["hello", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "greet someone" in capsys.readouterr().out


def test_broken_or_clashing_plugins_are_skipped_with_a_warning_naming_them(tmp_path, monkeypatch, capsys):
    _plugin_distribution(
        tmp_path,
        "bad_plugins",
        f"""
        [{PLUGIN_GROUP}]
        missing-dep = bad_plugin_cli:register
        not-there = no_such_module_anywhere:register
        segment = bad_plugin_cli:register_segment
        """,
        {
            "bad_plugin_cli": """
            import no_such_dependency_anywhere

            def register(subparsers):
                subparsers.add_parser("missing-dep")
            """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning) as warned:
        parser = build_parser()
    messages = "\n".join(str(w.message) for w in warned)
    assert "'missing-dep = bad_plugin_cli:register'" in messages and "no_such_dependency_anywhere" in messages
    assert "'not-there = no_such_module_anywhere:register'" in messages
    assert "a command 'segment' already exists" in messages
    # The built-in `segment` is the one kept; everything else works.
    assert parser.parse_args(["segment", "img.png", "--point", "1,2", "-o", "m.png"]).func.__module__ == (
        "mobilesam.commands.segment"
    )
    with pytest.warns(RuntimeWarning), pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "weights" in capsys.readouterr().out


def test_installed_metadata_registers_the_front_end_commands_of_pyproject():
    """Relies on `pip install -e .` having been run after pyproject.toml last changed (entry points
    are install-time metadata); a stale install fails here by name rather than as 'invalid choice'."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][PLUGIN_GROUP]
    installed = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    missing = {name: value for name, value in declared.items() if installed.get(name) != value}
    assert not missing, f"not installed (run `pip install -e .`): {missing}"
    assert {"serve", "labelstudio"} <= set(declared)
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert {"serve", "labelstudio"} <= set(subcommands)


def _core_sources() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_never_names_a_front_end_in_an_import_or_a_string():
    found = []
    for path in _core_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _CODE_NAMES.search(node.value) or _NAPARI_MODULE.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: string {node.value[:80]!r}")
                continue
            else:
                continue
            for name in names:
                if name.split(".")[0] in FRONT_END_MODULES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not found, "the core names a front-end:\n" + "\n".join(found)


def test_the_front_end_name_checks_catch_what_they_are_for():
    """The string patterns above: module references are caught, prose about napari is not."""
    for reference in ("napari", "napari.viewer", "from napari import Viewer", "labelstudio_backend.", "qtpy"):
        assert _CODE_NAMES.search(reference) or _NAPARI_MODULE.search(reference), reference
    for prose in ("the napari plugin", "pip install 'napari-mobilesam[volume]'", "used in napari."):
        assert not (_CODE_NAMES.search(prose) or _NAPARI_MODULE.search(prose)), prose


def test_importing_every_core_module_loads_no_front_end():
    code = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        import mobilesam
        failed = []
        for info in pkgutil.walk_packages(mobilesam.__path__, "mobilesam."):
            if info.name == "mobilesam.__main__":
                continue  # runs the CLI on import
            try:
                importlib.import_module(info.name)
            except ImportError as exc:  # an optional extra that is not installed
                failed.append(f"{{info.name}}: {{exc}}")
        front_ends = {FRONT_END_MODULES!r}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in front_ends)
        imported = [m for m in sys.modules if m.startswith("mobilesam.")]
        print(json.dumps({{"imported": len(imported), "failed": failed, "front_ends": loaded}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == [] and report["imported"] >= 60, report  # every module really imported
    assert report["front_ends"] == [], f"importing mobilesam loaded front-end modules: {report['front_ends']}"


def test_core_modules_import_each_other_without_cycles():
    script = _load_import_graph_script()
    graph = script.import_graph(CORE)
    cycles = script.strongly_connected_components(graph)
    # predictor <-> onnx.predictor (OnnxSamPredictor subclasses SamPredictor, which picks the ONNX
    # backend lazily) is being replaced by a backend strategy on another branch; no other cycle may come.
    known = [["mobilesam.onnx.predictor", "mobilesam.predictor"]]
    assert [c for c in cycles if c not in known] == [], cycles
    # Subcommands report usage errors with mobilesam.errors.UsageError, never by importing the CLI.
    assert {m for m, targets in graph.items() if "mobilesam.cli" in targets} == {"mobilesam.__main__"}


def test_import_graph_script_sees_lazy_and_string_imports(tmp_path):
    """The script counts imports inside functions, relative ones, import_module strings and PEP 562
    tables, so a cycle hidden in any of them is still reported; `if TYPE_CHECKING:` imports never run."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from ._lazy import lazy_attributes\n__getattr__ = lazy_attributes(__name__, {'A': 'a'})\n"
    )
    (package / "_lazy.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import sub\ndef f():\n    from .sub import b\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("import importlib\nimportlib.import_module(f'pkg.sub.{name}')\n")
    (package / "sub" / "c.py").write_text("from .. import a\n")
    script = _load_import_graph_script()
    graph = script.import_graph(package)
    assert graph["pkg"] == {"pkg._lazy", "pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert script.strongly_connected_components(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]
