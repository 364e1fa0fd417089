"""Print the project's dependencies from pyproject.toml, one per line, for `pip install -r -`.

The Makefile installs these under constraints.txt (the lock) before maturin builds the extension, so
the dependency list lives in pyproject.toml alone.

Usage: python scripts/requirements.py [EXTRA ...]
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main(extras: list[str]) -> int:
    """Write the runtime dependencies and those of each named extra to stdout."""
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names.extend(project["optional-dependencies"][extra])
    sys.stdout.write("".join(f"{name}\n" for name in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
