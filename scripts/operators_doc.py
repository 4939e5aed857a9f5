"""Regenerates docs/operators.md (`make docs`): the hand-written part above the marker is kept, the
tables below it are made from the run config's field docstrings (swarmgrpo.core.configdoc)."""

from pathlib import Path

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.core.configdoc import document

OPERATORS_DOC = Path(__file__).resolve().parents[1] / "docs" / "operators.md"


def main() -> None:
    current = OPERATORS_DOC.read_text() if OPERATORS_DOC.exists() else ""
    OPERATORS_DOC.write_text(document(RunConfig, current))
    print(f"wrote {OPERATORS_DOC}")


if __name__ == "__main__":
    main()
