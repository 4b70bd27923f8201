"""Check that the committed notebook is a clean, complete, untouched top-to-bottom run.

    python tools/check_notebook.py assignment5.ipynb

Exit 0 with a one-line summary, or exit 1 listing every failure. `check()` is the same check
as a function returning the list of failures (the tests drive it with small notebooks).

Plot rule: every code cell that is not tagged `lib` and calls `plt.show()` k times (outside
comments) must carry at least k `image/png` outputs; a non-`lib` cell that draws (`plt.<plot
function>(`, `.plot(`, `sns.<...>(`) without calling `plt.show()` or `plt.close(` must carry
at least one. Plots drawn inside helper functions are only seen through the `plt.show()` of
the cell that calls them, so end such cells with `plt.show()`.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import sys
import tokenize
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint import LINE_RE, notebook_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = Path(os.environ.get("A5_SEED", REPO.parent / "shared" / "seed" / "assignment5-seed.txt"))
MAX_BYTES = 5 * 1024 * 1024

# The seed's section headings, as `seed_headings()` extracts them from the seed text; used when
# the seed file is not at hand (a fresh CI checkout). tests/test_tools.py keeps the two in step.
SEED_HEADINGS = [
    "Section 1: Transformer",
    "Part 1: Input Embeddings",
    "Part 2: positional encoding",
    "Part 3: layer normalization",
    "Part 4: Feed Forward Network",
    "Part 5: Multi Head Attention",
    "Part 6: Residual Connection",
    "Part 7: Encoder",
    "Part 8: Decoder",
    "Part 9: Building the Transformer",
    "Part 10: Tokenizer",
    "Part 11: Load Dataset",
    "Part 12: Validation Loop",
    "Part 13: Training Loop",
    "Section 2: BERT and LoRA",
    "Assignment Structure",
    "Part 1: Data Preparation and Preprocessing",
    "Part 2: Building a Small BERT Model",
    "Part 3: Fine-tuning with LoRA",
    "Part 1: Data Preparation and Preprocessing",
    "1.2 Loading the Data",
    "1.3 Data Sampling and Class Distribution Analysis",
    "1.4 Data Encoding and Text Preprocessing",
    "1.5 Dataset Creation and Tokenization",
    "Part 2: Training a Small-Size BERT Model",
    "Part 3: Fine-Tuning TinyBERT with LoRA",
    "**Parameter-Efficient Fine-Tuning (PEFT)**",
    "**Fine-Tuning TinyBERT**",
]

SEED_CODE_START = re.compile(r"^In \[[^\]]*\]:\s*$")
SEED_HEADING = re.compile(r"^(#{1,3})\s+(\S.*?)\s*$")
# After a blank line, only markdown can start like this; a code block has ended.
MARKDOWN_ONLY = re.compile(r"^(#{2,6}\s|-{3,}\s*$|\*{3,}\s*$|<|>\s|\$\$)")

PY_KEYWORD_START = re.compile(
    r"^(import|from|def|class|for|while|if|elif|else|try|except|finally|with|return|print|assert|raise|async|await"
    r"|del|global|nonlocal|pass|break|continue|lambda)\b"
)
PY_ASSIGNMENT = re.compile(r"^[\w.\[\], ]+\s*[-+*/%@|&^]?=(?!=)")

MD_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_HEADING = re.compile(r"<h[1-6][^>]*>(.*?)</h[1-6]>", re.IGNORECASE | re.DOTALL)

PLACEHOLDERS = [
    (re.compile(r"#.*\bTODO\b"), "TODO marker"),
    (re.compile(r"=\s*#\s*TODO"), "`= # TODO` assignment"),
    (re.compile(r"^\s*pass\s*$", re.MULTILINE), "bare `pass` line"),
    (re.compile(r"\bNotImplementedError\b"), "NotImplementedError"),
]
PLT_SHOW = re.compile(r"\bplt\.show\(")
PLT_CLOSE = re.compile(r"\bplt\.close\(")
DRAWS = re.compile(
    r"\bplt\.(plot|bar|barh|hist|scatter|imshow|matshow|pie|boxplot|errorbar|fill_between|step|figure|subplots?)\("
    r"|\.plot\(|\bsns\.\w+\("
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TIMING_KEYS = ("papermill", "execution", "ExecuteTime")
TRACEBACK = "Traceback (most recent call last)"
PLACEHOLDER_SUMMARY = "written by the last cell"


def normalise(text: str) -> str:
    """Case-, whitespace- and emphasis-insensitive form of a heading."""
    text = re.sub(r"<[^>]+>", " ", text)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = re.sub(r"(?<!\w)[*_]|[*_](?!\w)", "", text)
    return " ".join(text.split()).strip(" #").casefold()


def looks_like_code(line: str) -> bool:
    """A line that starts, or is, a Python statement (as opposed to a line of prose)."""
    return bool(
        line[:1].isspace()
        or line.startswith(("#", "@", ")", "]", "}"))
        or PY_KEYWORD_START.match(line)
        or PY_ASSIGNMENT.match(line)
        or re.match(r"^[\w.]+\(", line)
    )


def seed_headings(text: str) -> list[str]:
    """Markdown headings (`#`, `##`, `###`) of the seed text, skipping its code cells.

    A code cell starts at an `In [..]:` line. Its comments can look like `# headings`, so a
    code cell ends only where, after a blank line, a line appears that only markdown starts
    with: a `##`/`###` heading, a rule, HTML, a quote, display math, or a `# heading` line that
    is followed by a blank line and then prose (code comments are followed by more comments or
    by the code they explain).
    """
    lines = text.splitlines()
    in_code = False
    found = []
    for i, line in enumerate(lines):
        if SEED_CODE_START.match(line):
            in_code = True
            continue
        if in_code and (i == 0 or not lines[i - 1].strip()):
            following = [rest for rest in lines[i + 1 :] if rest.strip()]
            next_blank = i + 1 >= len(lines) or not lines[i + 1].strip()
            prose_next = not following or not looks_like_code(following[0])
            if MARKDOWN_ONLY.match(line) or (SEED_HEADING.match(line) and next_blank and prose_next):
                in_code = False
        if not in_code and (m := SEED_HEADING.match(line)):
            found.append(m.group(2))
    return found


def load_seed(path: Path | None = None) -> list[str]:
    """The seed's headings; the built-in copy where the seed file is not at hand."""
    path = path or SEED
    return seed_headings(path.read_text(encoding="utf-8")) if path.exists() else SEED_HEADINGS


def notebook_headings(nb) -> list[str]:
    """Headings of the markdown cells, outside fenced code blocks."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            if not fenced and (m := MD_HEADING.match(line)):
                found.append(m.group(2))
        found.extend(HTML_HEADING.findall(cell.source))
    return found


def check_headings(nb, expected: list[str]) -> list[str]:
    """Each expected heading's text inside a notebook heading, in the expected order."""
    have = [normalise(h) for h in notebook_headings(nb)]
    failures = []
    position = 0
    for heading in expected:
        want = normalise(heading)
        hit = next((j for j in range(position, len(have)) if want in have[j]), None)
        if hit is not None:
            position = hit + 1
        elif any(want in h for h in have):
            failures.append(f"seed heading out of order: {heading!r}")
        else:
            failures.append(f"seed heading missing: {heading!r}")
    return failures


def without_comments(source: str) -> str:
    """The source with comments removed (raw source if it does not tokenize)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def output_text(output) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        data = output.get("data", {})
        text = "\n".join(v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text/"))
    return text if isinstance(text, str) else "".join(text)


def summary_placeholders(source: str) -> list[str]:
    """Long string literals of the run-summary cell: its placeholder, whatever the wording."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return [normalise(s) for s in strings if len(s) >= 20]


def label(index: int, cell) -> str:
    count = cell.get("execution_count")
    return f"cell {index} (In [{count if count is not None else ' '}])"


def check(nb_or_path, *, seed: list[str] | None = None, max_bytes: int = MAX_BYTES) -> list[str]:
    """All failures of the notebook (a path or a NotebookNode); empty when it passes."""
    failures: list[str] = []
    if isinstance(nb_or_path, (str, Path)):
        path = Path(nb_or_path)
        size = path.stat().st_size
        nb = nbformat.read(path, as_version=4)
    else:
        nb = nb_or_path
        size = len(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    if seed is None:
        seed = load_seed()

    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        failures.append(f"invalid nbformat: {error.message}")

    if size > max_bytes:
        failures.append(f"file is {size / 2**20:.2f} MiB, over the {max_bytes / 2**20:.2f} MiB limit")

    for key in ("widgets", "papermill"):
        if key in nb.metadata:
            failures.append(f"notebook metadata has `{key}` (run tools/clean_notebook.py)")

    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, cell in code:
        if not cell.source.strip():
            failures.append(f"cell {i}: empty code cell (delete it)")
    code = [(i, c) for i, c in code if c.source.strip()]

    for expected, (i, cell) in enumerate(code, start=1):
        if cell.get("execution_count") != expected:
            failures.append(f"{label(i, cell)}: execution count {cell.get('execution_count')}, expected {expected}")

    for i, cell in enumerate(nb.cells):
        for key in TIMING_KEYS:
            if key in cell.metadata:
                failures.append(f"cell {i}: metadata has `{key}` (run tools/clean_notebook.py)")

    for i, cell in code:
        tags = cell.metadata.get("tags", [])
        images = 0
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "error":
                failures.append(f"{label(i, cell)}: error output {output.get('ename')}: {output.get('evalue')}")
            elif kind == "stream" and TRACEBACK in output_text(output):
                failures.append(f"{label(i, cell)}: traceback in {output.get('name')} output")
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                failures.append(f"{label(i, cell)}: widget output (use plain text progress or none)")
            images += "image/png" in data

        for pattern, what in PLACEHOLDERS:
            if pattern.search(cell.source):
                failures.append(f"{label(i, cell)}: leftover placeholder: {what}")

        if "lib" not in tags:
            bare = without_comments(cell.source)
            shows = len(PLT_SHOW.findall(bare))
            needed = shows or int(bool(DRAWS.search(bare)) and not PLT_CLOSE.search(bare))
            if images < needed:
                failures.append(f"{label(i, cell)}: draws {needed} plot(s) but has {images} image/png output(s)")

    summary_cells = [(i, c) for i, c in code if re.search(r"display_id\s*=\s*['\"]run-summary['\"]", c.source)]
    if not summary_cells:
        failures.append("no cell displays the run summary (display_id='run-summary')")
    else:
        i, cell = summary_cells[0]
        texts = [normalise(output_text(o)) for o in cell.get("outputs", []) if o.get("output_type") != "error"]
        placeholders = [normalise(PLACEHOLDER_SUMMARY), *summary_placeholders(cell.source)]
        if not any(texts):
            failures.append(f"{label(i, cell)}: run summary has no output")
        elif any(p in t for t in texts for p in placeholders):
            failures.append(f"{label(i, cell)}: run summary still shows its placeholder (last cell did not update it)")

    failures += check_headings(nb, seed)

    if code:
        last_index, last = code[-1]
        stdout = "".join(output_text(o) for o in last.get("outputs", []) if o.get("output_type") == "stream")
        matches = LINE_RE.findall(stdout)
        if not matches:
            failures.append(f"{label(last_index, last)}: last code cell prints no provenance fingerprint line")
        else:
            printed, printed_n = matches[-1]
            sources = [c.source for _, c in code[:-1]]
            if printed != notebook_fingerprint(sources) or int(printed_n) != len(sources):
                failures.append(
                    f"provenance fingerprint mismatch: printed sha256:{printed[:12]}… over {printed_n} cells, "
                    f"committed code gives sha256:{notebook_fingerprint(sources)[:12]}… over {len(sources)} cells "
                    "(code edited after the run, or cells run out of order: rerun tools/render.py)"
                )
    else:
        failures.append("notebook has no code cells")
    return failures


def summary(path: Path, seed: list[str]) -> str:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    fingerprint = notebook_fingerprint([c.source for c in code[:-1]])
    return (
        f"OK {path.name}: {len(code)} code cells executed 1..{len(code)}, {images} plot image(s), "
        f"{len(seed)} seed headings in order, fingerprint sha256:{fingerprint[:12]}…, "
        f"{path.stat().st_size / 2**20:.2f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--seed", type=Path, default=None, help=f"seed text whose headings must appear ({SEED})")
    parser.add_argument("--max-mb", type=float, default=MAX_BYTES / 2**20)
    args = parser.parse_args(argv)
    if not args.notebook.exists():
        print(f"FAILED {args.notebook}: no such file")
        return 1
    seed = load_seed(args.seed)
    failures = check(args.notebook, seed=seed, max_bytes=int(args.max_mb * 2**20))
    if failures:
        print(f"FAILED {args.notebook}: {len(failures)} problem(s)")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(summary(args.notebook, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
