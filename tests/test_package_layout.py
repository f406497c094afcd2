"""What installs, and how its modules depend on each other: one import package ``edgeq`` whose runtime stands alone.

* A wheel built from the repository holds ``edgeq/`` only: nothing named ``runtime`` or ``converter`` lands at the
  top of site-packages (both names belong to other projects).
* ``import edgeq`` and the runtime import none of the converter's or report's dependencies.
* No import circle inside the package: module-level imports form a DAG, so every module can be read (and imported)
  after the ones it uses.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where each import package's source lives in the repository (setup.py maps them the same way).
PACKAGE_FOLDERS = {"edgeq": REPO / "edgeq", "edgeq.runtime": REPO / "runtime", "edgeq.converter": REPO / "converter"}
CONVERTER_ONLY_DEPENDENCIES = ("onnx", "onnxruntime", "tqdm", "matplotlib", "ai_edge_litert")


def package_modules() -> dict:
    """Dotted module name -> source file, for every module of the ``edgeq`` package."""
    modules = {}
    for package, folder in PACKAGE_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [part for part in path.relative_to(folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def module_level_imports(name: str, path: Path, modules: dict) -> set:
    """The package modules ``name`` imports when it is imported (not inside functions), minus its own parents,
    which Python imports first anyway."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in modules]
            if len(targets) < len(submodules):
                targets.append(node.module)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        imported.update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return imported


def import_cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_module_level_imports_form_no_circle():
    modules = package_modules()
    graph = {name: module_level_imports(name, path, modules) for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_cycle_finder_reports_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_edgeq_and_its_runtime_load_no_converter_dependency():
    blocked = ", ".join(repr(name) for name in CONVERTER_ONLY_DEPENDENCIES)
    code = (
        "import sys\n"
        f"for name in ({blocked},):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import edgeq, edgeq.runtime, edgeq.runtime.interpreter\n"
        "from edgeq.runtime import Interpreter\n"
        "assert edgeq.Interpreter is Interpreter\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_edgeq_convert_is_the_converters_convert():
    import edgeq
    from edgeq.converter import convert

    assert edgeq.convert is convert


def test_what_installs_is_one_top_level_package_edgeq(tmp_path):
    # build_py copies exactly the pure-Python files an install puts into site-packages (offline, no wheel needed).
    built = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["edgeq"]
    installed = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.py")}
    assert {"edgeq/__init__.py", "edgeq/cli.py", "edgeq/runtime/interpreter.py", "edgeq/converter/api.py",
            "edgeq/runtime/tflite_format/reader.py", "edgeq/converter/onnx_import/ops/conv.py"} <= installed
    sources = {f"{package.replace('.', '/')}/{path.relative_to(folder).as_posix()}"
               for package, folder in PACKAGE_FOLDERS.items() for path in folder.rglob("*.py")}
    assert sources <= installed


def python_files(folder: Path) -> list:
    return sorted(path for path in folder.rglob("*.py") if ".venv" not in path.parts)


def imported_names(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_script_or_test_imports_a_test_module():
    test_modules = {path.stem for path in (REPO / "tests").glob("*.py")} | {"tests", "conftest"}
    offenders = {
        path.relative_to(REPO).as_posix(): sorted(name for name in imported_names(path)
                                                  if name.split(".")[0] in test_modules)
        for path in python_files(REPO / "scripts") + python_files(REPO / "tests")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


# Spelled in two pieces so that this file does not match itself.
IMPORT_PATH_PATCHES = ("sys.path." + "insert", "sys.path." + "append", "spec_from_" + "file_location")


def test_no_script_or_test_patches_the_import_path():
    patched = [
        path.relative_to(REPO).as_posix()
        for path in python_files(REPO / "scripts") + python_files(REPO / "tests")
        if any(pattern in path.read_text() for pattern in IMPORT_PATH_PATCHES)
    ]
    assert patched == []
