"""The house rules of docs/architecture.md that can be checked mechanically, read from the source (nothing imported):

- no import cycle among the project's modules, and imports point down the layers; the add-on never imports torch
  (nor the backend), its core/ never bpy;
- project imports sit at module top in the backend;
- every axis change and image-row flip of the backend lives in backend/geometry/frames.py, the add-on's in
  blender_addon/core/arrays.py;
- pipelines/io.py is the only backend module that spells wire array names;
- no code cites a file outside the repository, no file names a path of a developer's machine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGES = ("backend", "blender_addon")


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every Python file of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO_ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Project modules an import statement names (``from . import x`` → the submodule when it is one)."""
    names = []
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
    for name in candidates:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in PACKAGES:
            names.append(name)
    return names


def _import_nodes(tree: ast.Module):
    """``(node, at module top?)`` for every import statement, leaving out ``if TYPE_CHECKING:`` blocks (annotations
    only, nothing runs)."""
    def walk(nodes, top):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, top
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.stmt, ast.ExceptHandler)):
                    yield from walk([child], top and isinstance(node, (ast.If, ast.Try, ast.ExceptHandler)))
    yield from walk(tree.body, True)


def _imports(module: str) -> list[tuple[str, bool]]:
    """``(imported project module, at module top?)`` for every import statement of ``module``."""
    path = MODULES[module]
    found = []
    for node, top in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        for target in _resolve(module, path, node):
            if target != module:
                found.append((target, top))
    return found


def _external(module: str) -> set[str]:
    """Top-level names of the packages outside the project that ``module`` imports (``torch``, ``bpy``, …)."""
    names = set()
    for node, _ in _import_nodes(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - set(PACKAGES)


GRAPH = {m: sorted({t for t, _ in _imports(m)}) for m in MODULES}


def test_the_module_graph_has_no_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in GRAPH[m]:
            if t.startswith(m + "."):  # a package importing its own submodules is no cycle
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m)


LAYERS = [  # higher layers may import lower ones, never the reverse
    ("backend.cli", "backend.__main__", "backend.cli_progress"),
    ("backend.serving",),
    ("backend.pipelines",),
    ("backend.latent_nerf", "backend.lion", "backend.michelangelo", "backend.point_e"),
    ("backend.guidance", "backend.geometry", "backend.models", "backend.metrics"),
    ("backend.params",),
]


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_backend_imports_point_down_and_the_add_on_never_imports_the_backend():
    wrong = []
    for m in MODULES:
        if m.startswith("blender_addon") and "torch" in _external(m):
            wrong.append(f"{m} imports torch (the add-on runs in Blender's Python)")
        if m.startswith("blender_addon.core") and _external(m) & {"bpy", "mathutils"}:
            wrong.append(f"{m} imports bpy (core/ is tested without Blender)")
    for m, targets in GRAPH.items():
        for t in targets:
            if m.startswith("blender_addon") and t.startswith("backend"):
                wrong.append(f"{m} -> {t} (the add-on runs inside Blender without the backend)")
            if m.startswith("blender_addon.core") and not t.startswith("blender_addon.core"):
                wrong.append(f"{m} -> {t} (core/ is bpy-free and stands alone)")
            lm, lt = _layer(m), _layer(t)
            if lm is not None and lt is not None and lt < lm:
                wrong.append(f"{m} -> {t} (up from layer {lm} to {lt})")
    assert not wrong, "\n".join(wrong)


def test_project_imports_sit_at_module_top_in_the_backend():
    late = [f"{m} imports {t} inside a function" for m in MODULES if m.startswith("backend")
            for t, at_top in _imports(m) if not at_top]
    assert not late, "\n".join(late)


def _code_lines(path: Path):
    """(line number, code without comments and strings) of a Python file."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    spans = set()
    for node in ast.walk(tree):  # blank out string constants (docstrings mention flips and wire names)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for line in range(node.lineno, node.end_lineno + 1):
                spans.add(line)
    for i, line in enumerate(text.splitlines(), 1):
        if i in spans and not re.search(r"[\[(=]", line.split('"')[0].split("'")[0]):
            continue
        code = re.sub(r"(\"[^\"]*\"|'[^']*')", '""', line).split("#")[0]
        yield i, code


FLIPS = re.compile(r"\.flip\(|np\.flip|flipud|fliplr|rot90|\[::-1\]")
AXIS_SWAPS = re.compile(r"\[\s*:\s*,\s*\[\s*0\s*,\s*2\s*,\s*1\s*\]\]|-\s*\w+\[\s*:\s*,\s*[12]\s*\]\s*[,\]]")


@pytest.mark.parametrize("package, home", [("backend", "backend/geometry/frames.py"),
                                           ("blender_addon", "blender_addon/core/arrays.py")])
def test_axis_changes_and_row_flips_live_in_one_module(package, home):
    found = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        if path == REPO_ROOT / home:
            continue
        for i, code in _code_lines(path):
            if FLIPS.search(code) or AXIS_SWAPS.search(code):
                found.append(f"{path.relative_to(REPO_ROOT)}:{i}: {code.strip()}")
    assert not found, f"only {home} may flip rows or swap axes:\n" + "\n".join(found)


def test_the_frames_module_really_does_the_swaps():
    """The check above must be able to fail: the patterns find the swaps the frames module makes."""
    text = (REPO_ROOT / "backend/geometry/frames.py").read_text(encoding="utf-8")
    assert FLIPS.search(text) and AXIS_SWAPS.search(text)


WIRE_NAME = re.compile(r"""["']\w+\.(?:v_pos|t_pos_idx|uv|uv_idx|v_color)["']|\}\.(?:v_pos|t_pos_idx|uv|uv_idx|v_color)["']"""
                       r"""|\[["']texture["']\]|["']texture["']\s*:""")


def test_only_pipelines_io_spells_wire_array_names_in_the_backend():
    allowed = {REPO_ROOT / "backend/pipelines/io.py"}
    found = []
    for path in sorted((REPO_ROOT / "backend").rglob("*.py")):
        if path in allowed:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if WIRE_NAME.search(line.split("#")[0]):
                found.append(f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}")
    assert not found, "wire array names outside backend/pipelines/io.py:\n" + "\n".join(found)
    assert WIRE_NAME.search((REPO_ROOT / "backend/pipelines/io.py").read_text(encoding="utf-8"))  # it can fail


def _tracked_text_files():
    for path in sorted(REPO_ROOT.rglob("*")):
        rel = path.relative_to(REPO_ROOT)
        if not path.is_file() or rel.parts[0] in (".git", ".venv", "dist", ".cache", ".whl", ".gl") \
                or "__pycache__" in rel.parts or path.suffix not in (".py", ".md", ".toml", ".txt", ".json", ""):
            continue
        if rel.parts[0] == "tests" and path.name == "test_architecture.py":
            continue
        yield rel, path


def test_no_citation_of_files_outside_the_repository_and_no_machine_paths():
    machine = re.compile(r"(?<![\w.])/(?:work|root|home/\w+)/|/tmp/[A-Za-z]\w*(?:venv|trial)")
    outside = re.compile(r"\.\./shared|DESIGN\.md")
    found = []
    for rel, path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if machine.search(line) or outside.search(line):
                found.append(f"{rel}:{i}: {line.strip()[:120]}")
    assert not found, "\n".join(found)
