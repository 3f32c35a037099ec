"""Rules the code keeps, checked on its source: what tests share lives in tests/helpers.py, every
message goes through the consoles of lstmmt/console.py, and functions stay short."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 50


def parsed(folder: str) -> dict[str, ast.Module]:
    """The syntax trees of the Python files under ROOT/folder, by path relative to ROOT."""
    return {str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
            for path in sorted((ROOT / folder).rglob("*.py"))}


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an import statement anywhere in `tree` names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_test_module_imports_another_test_module():
    """A helper two test modules need is in tests/helpers.py: importing a test module runs its
    module-level code in the importer (an importorskip there skips the importer too) and ties
    test files to each other."""
    offenders = {path: sorted(name for name in imported_modules(tree) if name.startswith("tests.test_"))
                 for path, tree in parsed("tests").items()}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_rich_consoles_are_made_in_one_module():
    """lstmmt/console.py holds the stdout and stderr consoles; a second console would break lines
    differently or interleave with a progress bar drawn on another one."""
    makers = [f"{path}:{node.lineno}" for path, tree in parsed("lstmmt").items() for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Console"]
    assert makers and all(place.startswith("lstmmt/console.py:") for place in makers), makers


def test_no_function_in_the_package_is_longer_than_50_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in parsed("lstmmt").items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
