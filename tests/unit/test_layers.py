"""The package's layers import one way only: protocol ← core ← trainer ← p2p ← node | coordinator ←
the commands (cli, demo, localnet). A module that imports a layer above its own fails here, named."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "swarmgrpo"

# What each layer may import, besides itself. The top (cli.py, demo.py, ...) may import everything.
MAY_IMPORT = {
    "protocol": set(),
    "core": {"protocol"},
    "trainer": {"protocol", "core"},
    "p2p": {"protocol", "core", "trainer"},
    "node": {"protocol", "core", "trainer", "p2p"},
    "coordinator": {"protocol", "core", "trainer", "p2p"},
}


def _imported_layers(path: Path) -> set[tuple[str, int]]:
    """(layer, line) for every `swarmgrpo.<layer>` this file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "swarmgrpo" and len(parts) > 1 and parts[1] in MAY_IMPORT:
                found.add((parts[1], node.lineno))
    return found


def test_every_layer_imports_only_the_layers_below_it():
    wrong = []
    for layer, allowed in MAY_IMPORT.items():
        files = sorted((PACKAGE / layer).rglob("*.py"))
        assert files, f"no modules under swarmgrpo/{layer}"
        for path in files:
            for target, line in sorted(_imported_layers(path)):
                if target != layer and target not in allowed:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports swarmgrpo.{target}")
    assert not wrong, "imports that run back up the layers:\n" + "\n".join(wrong)


def test_the_check_sees_a_back_import(tmp_path):
    """The rule above can fail: a trainer module importing the node daemon is seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from swarmgrpo.node.daemon import Node\n")
    assert _imported_layers(bad) == {("node", 2)}
