"""Load the notebook's `lib` cells (definitions only) into a module, without a kernel."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "assignment5.ipynb"


def load_lib_cells(path: Path = NOTEBOOK, name: str = "assignment5_lib") -> types.ModuleType:
    """Execute exactly the code cells tagged `lib`, in order, into a fresh module."""
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code" and "lib" in c.metadata.get("tags", [])]
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    exec(compile("\n\n".join(sources), str(path), "exec"), module.__dict__)
    return module
