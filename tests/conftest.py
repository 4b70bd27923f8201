"""Shared test fixtures: the notebook's `lib` cells loaded as a module, in-process."""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from nblib import load_lib_cells  # noqa: E402

NOTEBOOK = Path(os.environ.get("A5_NOTEBOOK", REPO / "assignment5.ipynb"))
# The real CFPB narratives committed under data/ (the notebook's default offline; see data/cfpb_complaints.md).
EMBEDDED_COMPLAINTS = REPO / "data" / "cfpb_complaints_narratives.csv.gz"


@pytest.fixture(scope="session")
def lib() -> types.ModuleType:
    return load_lib_cells(NOTEBOOK)


def load_bench(name: str, module_name: str | None = None) -> types.ModuleType:
    """A script of bench/ imported as a module (registered in sys.modules, where dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
