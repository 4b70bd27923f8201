"""Check that the committed notebook is a clean, complete, untouched top-to-bottom run.

    python tools/check_notebook.py assignment5.ipynb

Exit 0 with a one-line summary, or exit 1 listing every failure. `check()` is the same check
as a function returning the list of failures (the tests drive it with small notebooks).

Plot rule: every code cell that is not tagged `lib` and calls `plt.show()` k times (outside
comments) must carry at least k `image/png` outputs; a non-`lib` cell that draws (`plt.<plot
function>(`, `.plot(`, `sns.<...>(`) without calling `plt.show()` or `plt.close(` must carry
at least one. Plots drawn inside helper functions are only seen through the `plt.show()` of
the cell that calls them, so end such cells with `plt.show()`.

Rules on what a grader reads (issue 8, item 9):

* Truncated table cell: no table output may show a cell cut by pandas' `display.max_colwidth`:
  in `text/html` with a `<table`, a `<td>`/`<th>` whose text ends with `...` or `…`; in the
  `text/plain` of a displayed table (a display/execute result that has an HTML table, or whose
  lines read `index  value  ...`), a cell (columns split at 2+ spaces) ending so. A cell that is
  only `...` (pandas' marker for elided rows or columns) is not a cut cell; streams are never
  tables. Show the full text (`pd.option_context("display.max_colwidth", None)`) or wrap it.
* Markdown figures: in markdown cells (not in Markdown that code cells display), every number
  written with a thousands separator or a decimal point (`76,423`, `16.57`, `0.737`, `22.7M`,
  `1.5×`, `85.3%`) must appear among the numbers of the code cells' outputs. Commas are dropped
  and a trailing unit (`M`, `B`/`G`, `k`/`K`, `×`/`x`, `%`) split off before comparing numbers
  (`16.57` = `16.570`); a figure with a scaling unit also agrees with a number that rounds to it
  at its written precision once scaled (`22.7M` ~ 22,713,408; `85.3%` ~ 0.853). Not read:
  headings, fenced code, inline code, `$...$`/`$$...$$` math, HTML tags (their attributes),
  numbers inside version-like strings (`3.10.12`, `v1.2`), and every sentence (list item,
  table row) that cites a source: a year 19xx/20xx inside parentheses, "et al.", a URL, or the
  words "paper", "published", "model card" or "report". So a figure from elsewhere is written
  in a cited sentence, a setting as inline code (`weight_decay=0.01`), and a figure of this run
  is printed by code (or displayed as Markdown generated from the run).
* Conclusions: a markdown heading containing "Conclusion" between the headings
  "Section 1: Transformer" and "Section 2: BERT and LoRA", and another after
  "Part 3: Fine-Tuning TinyBERT with LoRA"; each such heading is followed, before the next
  heading, by a code cell whose `text/markdown` output (`display(Markdown(...))`, written from
  the run's results) is at least 300 characters long.
* Warnings: no code cell calls `warnings.filterwarnings("ignore")` or
  `warnings.simplefilter("ignore")` without a category, message or module (comments aside).
* Header: the markdown cells before the first code cell carry the seed's "Full Name" and
  "Student Number" fields.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import html
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


def heading_positions(nb) -> list[tuple[int, str]]:
    """(cell index, heading) of the markdown cells' headings, in order, outside fenced code."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            if not fenced and (m := MD_HEADING.match(line)):
                found.append((i, m.group(2)))
        found += [(i, h) for h in HTML_HEADING.findall(cell.source)]
    return found


def notebook_headings(nb) -> list[str]:
    """Headings of the markdown cells, outside fenced code blocks."""
    return [heading for _, heading in heading_positions(nb)]


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


def md_label(index: int) -> str:
    return f"cell {index} (markdown)"


# --- truncated table cells -----------------------------------------------------------------------------------------

TABLE_CELL = re.compile(r"<t([dh])\b[^>]*>(.*?)</t\1\s*>", re.IGNORECASE | re.DOTALL)
FRAME_ROW = re.compile(r"^\S+ {2,}\S")
ELLIPSES = ("...", "…")


def is_cut(text: str) -> bool:
    """A table cell that pandas cut (it ends with an ellipsis), not pandas' bare elision marker."""
    text = text.strip()
    return text.endswith(ELLIPSES) and text not in ELLIPSES


def looks_like_frame(plain: str) -> bool:
    """The `text/plain` repr of a DataFrame or Series: at least two `index  value` rows."""
    return sum(bool(FRAME_ROW.match(line)) for line in plain.splitlines()) >= 2


def truncated_cells(output) -> list[str]:
    """Table cells of a display/execute result that pandas cut at `display.max_colwidth`."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return []
    data = output.get("data", {})
    joined = {k: v if isinstance(v, str) else "".join(v) for k, v in data.items() if k in ("text/html", "text/plain")}
    page, plain = joined.get("text/html", ""), joined.get("text/plain", "")
    if "<table" in page.lower():
        cells = [html.unescape(re.sub(r"<[^>]+>", "", m.group(2))).strip() for m in TABLE_CELL.finditer(page)]
        return [c for c in cells if is_cut(c)]
    if plain and looks_like_frame(plain):
        tokens = [t for line in plain.splitlines() for t in re.split(r"\s{2,}", line.rstrip().rstrip("\\"))]
        return [t.strip() for t in tokens if is_cut(t)]
    return []


def check_truncated_tables(code) -> list[str]:
    failures = []
    for i, cell in code:
        for output in cell.get("outputs", []):
            if cut := truncated_cells(output):
                example = cut[0] if len(cut[0]) <= 40 else cut[0][-40:]
                failures.append(
                    f"{label(i, cell)}: truncated table cell {example!r} ({len(cut)} cell(s) cut by pandas "
                    "display.max_colwidth: show the full text)"
                )
    return failures


# --- markdown figures ----------------------------------------------------------------------------------------------

FIGURE = re.compile(
    r"(?<![\w.,])(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![.,]?\d)"
    r"(?P<unit>[MBGkK](?![A-Za-z])|×|x(?![A-Za-z])| ?%)?"
)
OUTPUT_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?|\d+(?:\.\d+)?")
UNIT_SCALE = {"M": 1e6, "B": 1e9, "G": 1e9, "k": 1e3, "K": 1e3, "%": 1e-2}
CITATION = re.compile(
    r"\([^()]*\b(?:19|20)\d{2}[a-z]?\b[^()]*\)|\bet al\b|https?://|\bwww\.|\bpapers?\b|\bpublished\b"
    r"|\bmodel cards?\b|\breport(?:s|ed)?\b",
    re.IGNORECASE,
)
ABBREVIATION = re.compile(r"\b(?:al|e\.g|i\.e|cf|vs|etc|approx|Fig|Eq|Sec|No)\.$", re.IGNORECASE)
BLOCK_START = re.compile(r"^\s*(?:[*+-]\s|\d+[.)]\s|\|)")


def markdown_prose(source: str) -> str:
    """Markdown without what the figure rule does not read: code, math, HTML tags, headings."""
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", " ", source, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"(`+)(?:(?!\1).)+?\1", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$[^$\n]+\$", " ", text)
    text = HTML_HEADING.sub(" ", text)
    text = re.sub(r"<[^>]*>", " ", text)
    return "\n".join("" if MD_HEADING.match(line) else line for line in text.splitlines())


def sentences(prose: str) -> list[str]:
    """Paragraphs, list items and table rows, each split into sentences."""
    blocks: list[list[str]] = [[]]
    for line in prose.splitlines():
        if not line.strip() or BLOCK_START.match(line):
            blocks.append([])
        blocks[-1].append(line)
    found = []
    for block in blocks:
        pieces = re.split(r"(?<=[.!?])\s+", " ".join(block).strip())
        for piece in pieces:
            if found and found[-1] is not None and ABBREVIATION.search(found[-1]):
                found[-1] += " " + piece
            else:
                found.append(piece)
        found.append(None)  # no sentence runs on across blocks
    return [s for s in found if s]


def figures(source: str) -> list[str]:
    """Figures of a markdown cell that must agree with the run (see the module docstring)."""
    found = []
    for sentence in sentences(markdown_prose(source)):
        if not CITATION.search(sentence):
            found += [m.group(0).strip() for m in FIGURE.finditer(sentence)]
    return list(dict.fromkeys(found))


def run_numbers(code) -> list[float]:
    """Sorted numbers of the code cells' outputs."""
    texts = [output_text(o) for _, cell in code for o in cell.get("outputs", [])]
    values = set()
    for text in texts:
        for match in OUTPUT_NUMBER.finditer(text):
            try:
                values.add(float(match.group(0).replace(",", "")))
            except ValueError:  # an overflowing exponent
                continue
    return sorted(values)


def agrees(figure: str, numbers: list[float]) -> bool:
    """Whether the run has the figure's number, or (for `M`, `B`, `k`, `%`) one that rounds to it scaled."""
    m = FIGURE.fullmatch(figure)
    if m is None:
        return False
    digits, unit = m.group("number").replace(",", ""), (m.group("unit") or "").strip()
    value = float(digits)
    at = bisect.bisect_left(numbers, value)
    if at < len(numbers) and numbers[at] == value:
        return True
    if unit not in UNIT_SCALE:
        return False
    scale = UNIT_SCALE[unit]
    tolerance = 0.5 * 10 ** -len(digits.partition(".")[2]) * (1 + 1e-9)
    low, high = (value - tolerance) * scale, (value + tolerance) * scale
    at = bisect.bisect_left(numbers, low)
    return at < len(numbers) and numbers[at] <= high


def check_markdown_figures(nb, code) -> list[str]:
    numbers = run_numbers(code)
    failures = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for figure in figures(cell.source):
            if not agrees(figure, numbers):
                failures.append(
                    f"{md_label(i)}: figure {figure!r} is not in any code output (print it from the run, "
                    "write a setting as inline code, or cite its source in the sentence)"
                )
    return failures


# --- conclusions ---------------------------------------------------------------------------------------------------

SECTION_1, SECTION_2, PART_3 = (
    "Section 1: Transformer",
    "Section 2: BERT and LoRA",
    "Part 3: Fine-Tuning TinyBERT with LoRA",
)
MIN_CONCLUSIONS = 300


def generated_markdown(cell) -> int:
    """Length of the longest `text/markdown` output of a code cell."""
    lengths = [0]
    for output in cell.get("outputs", []):
        text = output.get("data", {}).get("text/markdown", "")
        lengths.append(len((text if isinstance(text, str) else "".join(text)).strip()))
    return max(lengths)


def check_conclusions(nb) -> list[str]:
    headings = heading_positions(nb)
    names = [normalise(h) for _, h in headings]

    def find(heading: str, start: int = 0) -> int | None:
        return next((k for k in range(start, len(names)) if normalise(heading) in names[k]), None)

    s1 = find(SECTION_1)
    s2 = find(SECTION_2, 0 if s1 is None else s1 + 1)
    p3 = find(PART_3, 0 if s2 is None else s2 + 1)
    failures = []
    for anchor, start, end, where in [
        (SECTION_1, s1, s2, f"between {SECTION_1!r} and {SECTION_2!r}"),
        (PART_3, p3, None, f"after {PART_3!r}"),
    ]:
        if start is None:
            failures.append(f"no 'Conclusions' heading {where} (heading {anchor!r} missing)")
            continue
        found = [k for k in range(start + 1, len(names) if end is None else end) if "conclusion" in names[k]]
        if not found:
            last = len(nb.cells) - 1 if end is None else max(headings[start][0], headings[end][0] - 1)
            failures.append(
                f"cells {headings[start][0]}-{last}: no 'Conclusions' heading {where} (add one, followed by a "
                "cell that displays Markdown written from the run)"
            )
        for k in found:
            i = headings[k][0]
            stop = headings[k + 1][0] if k + 1 < len(headings) else len(nb.cells)
            between = [c for c in nb.cells[i + 1 : stop] if c.cell_type == "code"]
            if not any(generated_markdown(c) >= MIN_CONCLUSIONS for c in between):
                failures.append(
                    f"{md_label(i)}: conclusions heading {headings[k][1]!r} is not followed, before the next heading, "
                    f"by a code cell displaying Markdown of at least {MIN_CONCLUSIONS} characters written from the "
                    "run (display(Markdown(...)))"
                )
    return failures


# --- blanket warnings suppression ----------------------------------------------------------------------------------

WARNING_FILTERS = {"filterwarnings", "simplefilter"}
BLANKET_RE = re.compile(r"\b(?:filterwarnings|simplefilter)\(\s*(?:action\s*=\s*)?['\"]ignore['\"]\s*\)")


def parse_cell(source: str):
    """The cell's syntax tree, IPython magics and shell lines blanked; None if it does not parse."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def blanket_suppressions(source: str) -> list[str]:
    """`warnings.filterwarnings("ignore")`-style calls of a cell that name no category, message or module."""
    tree = parse_cell(source)
    if tree is None:
        return [m.group(0) for m in BLANKET_RE.finditer(without_comments(source))]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name not in WARNING_FILTERS:
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        action = node.args[0] if node.args else keywords.get("action")
        narrowed = len(node.args) > 1 or {"message", "category", "module"} & keywords.keys()
        if isinstance(action, ast.Constant) and action.value == "ignore" and not narrowed:
            found.append(ast.get_source_segment(source, node) or f"{name}('ignore')")
    return found


def check_warning_filters(code) -> list[str]:
    return [
        f"{label(i, cell)}: blanket warnings suppression {call} (name the category or message to ignore)"
        for i, cell in code
        for call in blanket_suppressions(cell.source)
    ]


# --- header ----------------------------------------------------------------------------------------------------------

HEADER_FIELDS = ("Full Name", "Student Number")


def check_header(nb) -> list[str]:
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    header = [i for i in range(first_code) if nb.cells[i].cell_type == "markdown"]
    text = " ".join(" ".join(nb.cells[i].source.split()) for i in header).casefold()
    missing = [f for f in HEADER_FIELDS if f.casefold() not in text]
    if not missing:
        return []
    where = (
        f"cells {header[0]}-{header[-1]} (markdown)" if len(header) > 1 else md_label(header[0]) if header else "cell 0"
    )
    fields = " and ".join(repr(f) for f in missing)
    return [f"{where}: header before the first code cell lacks the seed's {fields} field(s)"]


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
    failures += check_header(nb)
    failures += check_conclusions(nb)
    failures += check_truncated_tables(code)
    failures += check_warning_filters(code)
    failures += check_markdown_figures(nb, code)

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
