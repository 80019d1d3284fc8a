"""The layer rule as a test: the engine imports no WebUI module anywhere; the adapter imports
WebUI modules only inside functions, so it loads (and is tested) without a WebUI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEBUI_ROOTS = {"modules", "launch", "gradio", "ldm", "sgm", "scripts", "k_diffusion", "webui"}
ENGINE_FILES = sorted((ROOT / "motion_module").rglob("*.py"))
ADAPTER_FILES = sorted((ROOT / "scripts" / "animatediff_webui").glob("*.py")) + [
    ROOT / "scripts" / "animatediff_utils.py",
    ROOT / "scripts" / "animatediff_i2ibatch.py",
]


def imported_roots(node: ast.AST) -> list[tuple[int, str]]:
    found = []
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            found += [(child.lineno, alias.name.split(".")[0]) for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            found.append((child.lineno, child.module.split(".")[0]))
        elif isinstance(child, ast.Call) and getattr(child.func, "attr", getattr(child.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if (
                child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append((child.lineno, child.args[0].value.split(".")[0]))
    return found


def module_level(tree: ast.Module) -> ast.Module:
    """The statements that run at import: everything outside function bodies."""
    body = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(stmt, ast.ClassDef):
            stmt = ast.ClassDef(
                name=stmt.name,
                bases=stmt.bases,
                keywords=stmt.keywords,
                body=[s for s in stmt.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)],
                decorator_list=stmt.decorator_list,
                type_params=[],
            )
        body.append(stmt)
    return ast.Module(body=body, type_ignores=[])


def test_there_are_files_to_check():
    assert len(ENGINE_FILES) >= 5 and len(ADAPTER_FILES) >= 8


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.name)
def test_engine_never_imports_the_webui(path):
    bad = [(line, name) for line, name in imported_roots(ast.parse(path.read_text())) if name in WEBUI_ROOTS]
    assert not bad, (
        f"{path.relative_to(ROOT)} imports WebUI modules at lines {bad}; the engine must stay pure"
    )


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=lambda p: p.name)
def test_adapter_imports_webui_only_inside_functions(path):
    tree = module_level(ast.parse(path.read_text()))
    bad = [(line, n) for line, n in imported_roots(tree) if n in WEBUI_ROOTS - {"scripts"}]
    assert not bad, (
        f"{path.relative_to(ROOT)} imports WebUI modules at load (lines {bad}); import them in functions"
    )


def test_the_scan_catches_violations():
    sneaky = "import torch\ndef f():\n    from modules import shared\nimportlib.import_module('gradio')\n"
    assert [n for _, n in imported_roots(ast.parse(sneaky))] == ["torch", "modules", "gradio"]
    assert [n for _, n in imported_roots(module_level(ast.parse(sneaky)))] == ["torch", "gradio"]


def test_adapter_and_engine_import_without_a_webui():
    import importlib
    import sys

    assert "modules" not in sys.modules or not hasattr(sys.modules["modules"], "__file__")
    for name in ("args", "ui", "settings", "host_model", "lifecycle", "xyz"):
        importlib.import_module(f"scripts.animatediff_webui.{name}")
    importlib.import_module("scripts.animatediff_utils")
    importlib.import_module("scripts.animatediff_i2ibatch")
