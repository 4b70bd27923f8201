"""How much a reader has to read: five figures against their goals.

    python tools/reading_burden.py [--notebook assignment5.ipynb] [--rev COMMIT] [--check]

Rules (on 84670bf they give 1,925 / 243 / 4,724 / 3,476 / 2,548; the issue measured 1,925 / 243 /
4,773 / 3,525 / 2,548): code lines are the non-blank lines of the notebook's code cells, all of
them and those before the first markdown cell that starts with `# Section 1`. Words are the
whitespace-separated tokens of the markdown cells' sources (and of README.md), except table markup
(tokens made only of `|`, `-`, `:`). Lines in bench/ and tools/ are the non-blank lines of the
scripts (*.py, *.sh) there that git tracks or would (untracked, not ignored): logs and docs are
not counted. `--rev` measures a commit, not the working tree; `--check` exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def figures(notebook: str = "assignment5.ipynb", rev: str | None = None) -> list[tuple[str, int, int]]:
    read = lambda path: git("show", f"{rev}:{path}") if rev else (REPO / path).read_text("utf-8", "replace")
    lines = lambda text: sum(1 for line in text.splitlines() if line.strip())
    words = lambda text: sum(1 for token in text.split() if not set(token) <= set("|-:"))
    cells = [(c["cell_type"], "".join(c["source"])) for c in json.loads(read(notebook))["cells"]]
    start = next((i for i, (kind, s) in enumerate(cells) if kind == "markdown" and s.lstrip().startswith("# Section 1")),
                 len(cells))
    listed = git("ls-tree", "-r", "--name-only", rev, "bench", "tools") if rev else git(
        "ls-files", "--cached", "--others", "--exclude-standard", "bench", "tools")
    scripts = [f for f in listed.split() if f.endswith((".py", ".sh")) and (rev or (REPO / f).is_file())]
    return [("code lines in the notebook", sum(lines(s) for kind, s in cells if kind == "code"), 1600),
            ("code lines before Section 1", sum(lines(s) for kind, s in cells[:start] if kind == "code"), 100),
            ("words of markdown in the notebook", sum(words(s) for kind, s in cells if kind == "markdown"), 3000),
            ("words in README.md", words(read("README.md")), 1200),
            ("lines in bench/ and tools/", sum(lines(read(f)) for f in scripts), 1900)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", default="assignment5.ipynb", help="relative to the repository root")
    parser.add_argument("--rev", help="a commit to measure instead of the working tree")
    parser.add_argument("--check", action="store_true", help="exit 1 if any goal is missed")
    args = parser.parse_args(argv)
    rows = figures(args.notebook, args.rev)
    for name, value, goal in rows:
        print(f"{name:<36}{value:>7,}   goal <= {goal:>5,}   {'ok' if value <= goal else 'MISSED'}")
    return int(args.check and any(value > goal for _, value, goal in rows))


if __name__ == "__main__":
    sys.exit(main())
