"""benchmarks/ is a folder of scripts and one shared library: no script imports another, none edits
sys.path, and the README lists each one with a command."""

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_scripts_and_a_library():
    assert len(SCRIPTS) >= 5 and (BENCHMARKS / "lib" / "__init__.py").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_no_other_script_and_leaves_sys_path_alone(script):
    text = script.read_text()
    others = {p.stem for p in SCRIPTS} - {script.stem}
    assert not _imported(ast.parse(text)) & others
    assert "sys.path" not in text


@pytest.mark.parametrize("module", sorted((BENCHMARKS / "lib").glob("*.py")), ids=lambda p: p.name)
def test_the_library_imports_no_script(module):
    assert not _imported(ast.parse(module.read_text())) & {p.stem for p in SCRIPTS}


def test_the_readme_gives_each_script_a_command():
    readme = (BENCHMARKS / "README.md").read_text()
    missing = [p.name for p in SCRIPTS if f"python benchmarks/{p.name}" not in readme]
    assert not missing, f"benchmarks/README.md has no command for {missing}"
