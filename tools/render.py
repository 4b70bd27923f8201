"""Execute the notebook top to bottom in place, then clean and check it.

    python tools/render.py --profile cpu [--notebook assignment5.ipynb] [--timeout SECONDS] [--keep-previous]

Runs every cell with nbclient (no papermill, so no injected parameters cell) on the `python3`
kernel, from the repository root, with A5_PROFILE=<profile>, A5_SHOW_PROGRESS=0 and
A5_ALLOW_DOWNLOADS as given. The result goes to a temporary file and replaces the notebook
only once it has run without error, been cleaned and passed tools/check_notebook.py;
otherwise it is kept as out-failed.ipynb for debugging and the exit status is 1. A successful run
is recorded in the notebook's metadata `a5_render`: the fingerprint of the code cells as executed
(tools/fingerprint.py), the profile, the wall time and the UTC time it finished.

Progress: as each code cell starts, one line with its index, the time since the render started (mm:ss)
and a label (the nearest markdown heading above it and its first source line, a `# @title` shown as
its title); as it ends, its duration when it took over 5 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_notebook  # noqa: E402
import clean_notebook  # noqa: E402
from fingerprint import KEY, fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def remove_previous_run(root: Path, profile: str) -> list[Path]:
    """Delete what an earlier run of this profile left behind (checkpoints, tokenizers, logs, saved models),
    so the notebook resumes nothing and the render is a clean Run All."""
    paths = [root / "weights" / f"transformer-{profile}", root / "runs" / f"transformer-{profile}",
             *(root / "weights" / name for name in ("bert_small", "lora_adapter", "lora_merged")),
             *(root / "data").glob(f"tokenizer-*-{profile}-*.json")]
    removed = [path for path in paths if path.exists()]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


LABEL_WIDTH = 100
SLOW_CELL_SECONDS = 5.0
TITLE = re.compile(r"^\s*#\s*@title\b\s*(.*?)\s*(?:\{[^{}]*\})?\s*$")  # `# @title Text { display-mode: "form" }`


def plain_heading(text: str) -> str:
    """A heading without HTML tags, emphasis and code marks, on one line."""
    text = re.sub(r"<[^>]+>", " ", text).replace("**", "").replace("__", "").replace("`", "")
    return " ".join(text.split())


def last_heading(source: str) -> str | None:
    """The last heading (Markdown `#` or HTML `<hN>`) of a markdown cell, outside fenced code."""
    found, fenced, offset = [], False, 0
    for line in source.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := check_notebook.MD_HEADING.match(line.rstrip("\r\n"))):
            found.append((offset, m.group(2)))
        offset += len(line)
    found += [(m.start(), m.group(1)) for m in check_notebook.HTML_HEADING.finditer(source)]
    headings = [plain_heading(h) for _, h in sorted(found, key=lambda pair: pair[0])]
    return next((h for h in reversed(headings) if h), None)


def first_line(source: str) -> str:
    """The first non-empty source line; a Colab form's `# @title Text` gives `Text`."""
    line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    m = TITLE.match(line)
    return (m.group(1) or line) if m else line


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def cell_label(cells, index: int, width: int = LABEL_WIDTH) -> str:
    """`heading | first line` of cells[index]: the nearest markdown heading above it and its first non-empty line,
    cut to `width` characters."""
    heading = next((h for cell in reversed(cells[:index]) if cell.get("cell_type") == "markdown"
                    and (h := last_heading(cell.get("source", "")))), None)
    line = first_line(cells[index].get("source", ""))
    return cut(" | ".join(part for part in (heading, line) if part), width)


def elapsed(seconds: float) -> str:
    """mm:ss (minutes go past 59 on long runs)."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Progress:
    """nbclient hooks that print one line as each code cell starts and, if it was slow, one as it ends."""

    def __init__(self, nb, started: float | None = None, slow: float = SLOW_CELL_SECONDS, out=None) -> None:
        self.labels = {i: cell_label(nb.cells, i) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
        self.total = sum(1 for cell in nb.cells if cell.cell_type == "code" and cell.source.strip())
        self.started = time.time() if started is None else started
        self.slow, self.out, self.count, self.cell_started = slow, out, 0, {}  # out None: sys.stdout

    def on_cell_execute(self, cell, cell_index: int) -> None:
        self.count, now = self.count + 1, time.time()
        self.cell_started[cell_index] = now
        print(f"render: [{elapsed(now - self.started)}] cell {cell_index} ({self.count}/{self.total}) "
              f"{self.labels.get(cell_index, '')}", file=self.out, flush=True)

    def on_cell_executed(self, cell, cell_index: int, execute_reply=None) -> None:
        now = time.time()
        seconds = now - self.cell_started.pop(cell_index, now)
        if seconds > self.slow:
            print(f"render: [{elapsed(now - self.started)}] cell {cell_index} took {seconds:.0f} s",
                  file=self.out, flush=True)


def execute(nb, *, cwd: Path, timeout: int | None, kernel: str = "python3", started: float | None = None,
            progress: bool = True) -> None:
    """Run all cells of nb in place; raises on the first failing cell (nb keeps what ran). With `progress`, a line
    per code cell as it starts (time since `started`, default now) and its duration as it ends if over 5 s."""
    hooks = {}
    if progress:
        log = Progress(nb, started)
        hooks = {"on_cell_execute": log.on_cell_execute, "on_cell_executed": log.on_cell_executed}
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}},
                   record_timing=False, store_widget_state=False, **hooks).execute()


def stamp(nb, code_fingerprint: str, profile: str, wall_seconds: float) -> None:
    """Record the render in the notebook's metadata."""
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    nb.metadata[KEY] = {"fingerprint": code_fingerprint, "profile": profile,
                        "wall_seconds": round(wall_seconds, 1), "finished": finished}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="A5_PROFILE: full | cpu | smoke | auto")
    parser.add_argument("--notebook", type=Path, default=REPO / "assignment5.ipynb")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    parser.add_argument("--allow-downloads", choices=("0", "1"), default="1", help="A5_ALLOW_DOWNLOADS (default 1)")
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--keep-previous", action="store_true",
                        help="keep earlier checkpoints and tokenizers of this profile (the run then resumes from them)")
    parser.add_argument("--failed", type=Path, default=REPO / "out-failed.ipynb", help="where a failed run is kept")
    args = parser.parse_args(argv)

    notebook = args.notebook.resolve()
    os.environ.update(A5_PROFILE=args.profile, A5_SHOW_PROGRESS="0", A5_ALLOW_DOWNLOADS=args.allow_downloads)
    os.environ.pop("MPLBACKEND", None)  # let the kernel use its inline backend, so figures become outputs
    nb = nbformat.read(notebook, as_version=4)
    if not args.keep_previous:
        for path in remove_previous_run(REPO, args.profile):
            print(f"render: removed {path.relative_to(REPO)} from an earlier run", flush=True)

    executed = fingerprint(nb)  # nbclient sends exactly these sources to the kernel
    started = time.time()
    print(f"render: executing {notebook.name} with A5_PROFILE={args.profile} in {REPO}", flush=True)
    try:
        execute(nb, cwd=REPO, timeout=args.timeout, kernel=args.kernel, started=started)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        nbformat.write(nb, args.failed)
        print(f"render: execution failed after {time.time() - started:.0f} s; partial run kept in {args.failed}",
              flush=True)
        print(str(error)[-3000:], flush=True)
        return 1
    print(f"render: executed in {time.time() - started:.0f} s", flush=True)

    stamp(nb, executed, args.profile, time.time() - started)
    clean_notebook.clean(nb)
    with tempfile.NamedTemporaryFile("w", suffix=".ipynb", dir=notebook.parent, delete=False, encoding="utf-8") as f:
        nbformat.write(nb, f)
        rendered = Path(f.name)
    rendered.chmod(notebook.stat().st_mode & 0o777)
    failures = check_notebook.check(rendered)
    if failures:
        rendered.replace(args.failed)
        print(f"render: the run does not pass the checker; kept in {args.failed}:", flush=True)
        print("\n".join(f"  - {failure}" for failure in failures), flush=True)
        return 1
    rendered.replace(notebook)
    print(check_notebook.summary(notebook), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
