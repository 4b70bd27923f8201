"""Check that the committed notebook is a clean, complete, untouched top-to-bottom run.

    python tools/check_notebook.py assignment5.ipynb [--max-mb 5]

Exit 0 with a one-line summary, or 1 listing every failure (`check()` returns them). Checked:
valid nbformat and size; no run-time metadata (tools/clean_notebook.py); code cells non-empty and
executed 1..n in order, without error, traceback or widget outputs or placeholders (TODO, bare
`pass`, NotImplementedError); an image for every `plt.show()` of a cell not tagged `lib` (one for a
cell that draws without `plt.show()`/`plt.close()`); the run summary filled in; the seed's headings
in order; the render's fingerprint (metadata `a5_render`, written by tools/render.py) equal to the
saved code cells'. And what a grader reads:
* Header: the markdown before the first code cell has the seed's "Full Name" and "Student Number".
* Conclusions: a "Conclusion" heading between "Section 1: Transformer" and "Section 2: BERT and
  LoRA" and one after "Part 3: Fine-Tuning TinyBERT with LoRA", each followed, before the next
  heading, by a code cell displaying Markdown (written from the run) of at least 300 characters.
* Folded support code: a code cell answering one of the seed's TODOs is tagged `todo`; every other
  code cell without outputs (the `parameters` cell excepted) is support code, folded in Colab and
  Jupyter: its first line is `# @title <text>` and its metadata has `"cellView": "form"` and
  `"jupyter": {"source_hidden": true}`. A `# @title` cell carries both keys; a `todo` cell is never
  folded.
* Grader's map: every internal link `[text](#anchor)` (or `<a href="#anchor">`) of the markdown, the
  map's table at the top and any other, has an explicit HTML anchor `<a id="anchor"></a>` (or
  `name=`) in a markdown cell: heading anchors differ between Jupyter, Colab and GitHub.
* No table output shows a cell cut by pandas' `display.max_colwidth` (ending `...` or `…`).
* No `warnings.filterwarnings("ignore")`/`simplefilter("ignore")` without category or message.
* Markdown figures: a number written with a thousands separator or a decimal point (`76,423`,
  `0.737`, `22.7M`, `1.5×`, `85.3%`) must appear among the code outputs' numbers (a scaling unit
  may round: `22.7M` ~ 22,713,408). Not read: headings, code, math, HTML tags, version strings,
  and sentences that cite a source (a year in parentheses, "et al.", a URL, "paper", "published",
  "model card", "report"): print this run's figures from code, write settings as inline code.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import html
import io
import json
import re
import sys
import tokenize
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint import KEY, fingerprint  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
RENDER = "python tools/render.py --profile cpu"
# The seed's section headings, in order (tests/test_tools.py checks them against the seed text).
SEED_HEADINGS = [
    "Section 1: Transformer", "Part 1: Input Embeddings", "Part 2: positional encoding",
    "Part 3: layer normalization", "Part 4: Feed Forward Network", "Part 5: Multi Head Attention",
    "Part 6: Residual Connection", "Part 7: Encoder", "Part 8: Decoder", "Part 9: Building the Transformer",
    "Part 10: Tokenizer", "Part 11: Load Dataset", "Part 12: Validation Loop", "Part 13: Training Loop",
    "Section 2: BERT and LoRA", "Assignment Structure", "Part 1: Data Preparation and Preprocessing",
    "Part 2: Building a Small BERT Model", "Part 3: Fine-tuning with LoRA",
    "Part 1: Data Preparation and Preprocessing", "1.2 Loading the Data",
    "1.3 Data Sampling and Class Distribution Analysis", "1.4 Data Encoding and Text Preprocessing",
    "1.5 Dataset Creation and Tokenization", "Part 2: Training a Small-Size BERT Model",
    "Part 3: Fine-Tuning TinyBERT with LoRA", "**Parameter-Efficient Fine-Tuning (PEFT)**", "**Fine-Tuning TinyBERT**",
]
SECTION_1, SECTION_2, PART_3 = SEED_HEADINGS[0], SEED_HEADINGS[14], SEED_HEADINGS[25]
MIN_CONCLUSIONS = 300
HEADER_FIELDS = ("Full Name", "Student Number")

MD_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_HEADING = re.compile(r"<h[1-6][^>]*>(.*?)</h[1-6]>", re.IGNORECASE | re.DOTALL)
PLACEHOLDERS = [
    (re.compile(r"#.*\bTODO\b"), "TODO marker"),
    (re.compile(r"^\s*pass\s*$", re.MULTILINE), "bare `pass` line"),
    (re.compile(r"\bNotImplementedError\b"), "NotImplementedError"),
]
DRAWS = re.compile(
    r"\bplt\.(plot|bar|barh|hist|scatter|imshow|matshow|pie|boxplot|errorbar|fill_between|step|figure|subplots?)\("
    r"|\.plot\(|\bsns\.\w+\("
)
BLANKET = re.compile(r"\b(?:\w+\.)?(?:filterwarnings|simplefilter)\(\s*(?:action\s*=\s*)?(['\"])ignore\1\s*\)")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TIMING_KEYS = ("papermill", "execution", "ExecuteTime")


def text_of(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def normalise(text: str) -> str:
    """Case-, whitespace- and emphasis-insensitive form of a heading."""
    text = re.sub(r"<[^>]+>", " ", text).replace("**", "").replace("__", "").replace("`", "")
    text = re.sub(r"(?<!\w)[*_]|[*_](?!\w)", "", text)
    return " ".join(text.split()).strip(" #").casefold()


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
            elif not fenced and (m := MD_HEADING.match(line)):
                found.append((i, m.group(2)))
        found += [(i, h) for h in HTML_HEADING.findall(cell.source)]
    return found


def check_headings(nb, expected: list[str]) -> list[str]:
    """Each expected heading's text inside a notebook heading, in the expected order."""
    have = [normalise(h) for _, h in heading_positions(nb)]
    failures, position = [], 0
    for heading in expected:
        want = normalise(heading)
        hit = next((j for j in range(position, len(have)) if want in have[j]), None)
        if hit is not None:
            position = hit + 1
        else:
            failures.append(f"seed heading {'out of order' if any(want in h for h in have) else 'missing'}: {heading!r}")
    return failures


def without_comments(source: str) -> str:
    """The source with comments removed (raw source if it does not tokenize)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return tokenize.untokenize(t for t in tokens if t.type != tokenize.COMMENT)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def output_text(output) -> str:
    if output.get("output_type") == "stream":
        return text_of(output.get("text", ""))
    return "\n".join(text_of(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))


def label(index: int, cell) -> str:
    return f"cell {index} (In [{' ' if cell.get('execution_count') is None else cell.execution_count}])"


def check_cells(nb, code) -> list[str]:
    """Execution order, run-time metadata, outputs, placeholders and plot images of the code cells."""
    failures = [f"cell {i}: metadata has `{key}` (run tools/clean_notebook.py)"
                for i, cell in enumerate(nb.cells) for key in TIMING_KEYS if key in cell.metadata]
    for expected, (i, cell) in enumerate(code, start=1):
        where = label(i, cell)
        if cell.get("execution_count") != expected:
            failures.append(f"{where}: execution count {cell.get('execution_count')}, expected {expected}")
        images = 0
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                failures.append(f"{where}: error output {output.get('ename')}: {output.get('evalue')}")
            elif output.get("output_type") == "stream" and "Traceback (most recent call last)" in output_text(output):
                failures.append(f"{where}: traceback in {output.get('name')} output")
            if WIDGET_VIEW in output.get("data", {}):
                failures.append(f"{where}: widget output (use plain text progress or none)")
            images += "image/png" in output.get("data", {})
        failures += [f"{where}: leftover placeholder: {what}" for pattern, what in PLACEHOLDERS
                     if pattern.search(cell.source)]
        bare = without_comments(cell.source)
        failures += [f"{where}: blanket warnings suppression {m.group(0)} (name the category or message to ignore)"
                     for m in BLANKET.finditer(bare)]
        if "lib" not in cell.metadata.get("tags", []):
            needed = len(re.findall(r"\bplt\.show\(", bare)) or int(
                bool(DRAWS.search(bare)) and not re.search(r"\bplt\.close\(", bare))
            if images < needed:
                failures.append(f"{where}: draws {needed} plot(s) but has {images} image/png output(s)")
        failures += [f"{where}: truncated table cell {cut[0][-40:]!r} ({len(cut)} cell(s) cut by pandas "
                     "display.max_colwidth: show the full text)"
                     for cut in map(truncated_cells, cell.get("outputs", [])) if cut]
    return failures


def check_run_summary(code) -> list[str]:
    """The cell with display_id='run-summary' shows the summary the last cell wrote, not its placeholder."""
    cells = [(i, c) for i, c in code if re.search(r"display_id\s*=\s*['\"]run-summary['\"]", c.source)]
    if not cells:
        return ["no cell displays the run summary (display_id='run-summary')"]
    i, cell = cells[0]
    texts = [normalise(output_text(o)) for o in cell.get("outputs", []) if o.get("output_type") != "error"]
    try:  # the cell's long string literals are its placeholder, whatever the wording
        strings = [n.value for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Constant)]
    except SyntaxError:
        strings = []
    placeholders = [normalise(s) for s in ["written by the last cell", *strings] if isinstance(s, str) and len(s) >= 20]
    if not any(texts):
        return [f"{label(i, cell)}: run summary has no output"]
    shown = any(p in t for t in texts for p in placeholders)
    return [f"{label(i, cell)}: run summary still shows its placeholder (last cell did not update it)"] if shown else []


def check_fingerprint(nb) -> list[str]:
    """The fingerprint tools/render.py recorded equals the saved code cells' fingerprint."""
    recorded = (nb.metadata.get(KEY) or {}).get("fingerprint")
    if recorded is None:
        return [f"no render fingerprint in the notebook metadata (`{KEY}`): render with {RENDER}"]
    return [] if recorded == fingerprint(nb) else [f"code cells changed since the render: re-render with {RENDER}"]



TABLE_CELL = re.compile(r"<t([dh])\b[^>]*>(.*?)</t\1\s*>", re.IGNORECASE | re.DOTALL)


def is_cut(text: str) -> bool:
    """A table cell that pandas cut (it ends with an ellipsis), not pandas' bare elision marker."""
    text = text.strip()
    return text.endswith(("...", "…")) and text not in ("...", "…")


def truncated_cells(output) -> list[str]:
    """Table cells (HTML, or a DataFrame's plain text) of a display/execute result that pandas cut."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return []
    data = output.get("data", {})
    page, plain = text_of(data.get("text/html", "")), text_of(data.get("text/plain", ""))
    if "<table" in page.lower():
        cells = [html.unescape(re.sub(r"<[^>]+>", "", m.group(2))) for m in TABLE_CELL.finditer(page)]
    elif sum(bool(re.match(r"^\S+ {2,}\S", line)) for line in plain.splitlines()) >= 2:  # `index  value` rows
        cells = [t for line in plain.splitlines() for t in re.split(r"\s{2,}", line.rstrip().rstrip("\\"))]
    else:
        cells = []
    return [c.strip() for c in cells if is_cut(c)]



FIGURE = re.compile(
    r"(?<![\w.,])(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+)(?![.,]?\d)"
    r"(?P<unit>[MBGkK](?![A-Za-z])|×|x(?![A-Za-z])| ?%)?"
)
OUTPUT_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
UNIT_SCALE = {"M": 1e6, "B": 1e9, "G": 1e9, "k": 1e3, "K": 1e3, "%": 1e-2}
CITATION = re.compile(
    r"\([^()]*\b(?:19|20)\d{2}[a-z]?\b[^()]*\)|\bet al\b|https?://|\bwww\.|\bpapers?\b|\bpublished\b"
    r"|\bmodel cards?\b|\breport(?:s|ed)?\b",
    re.IGNORECASE,
)
ABBREVIATION = re.compile(r"\b(?:al|e\.g|i\.e|cf|vs|etc|approx|Fig|Eq|Sec|No)\.$", re.IGNORECASE)


def markdown_prose(source: str) -> str:
    """Markdown without what the figure rule does not read: code, math, HTML tags, headings."""
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", " ", source, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"(`+)(?:(?!\1).)+?\1", " ", text, flags=re.DOTALL)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"<[^>]*>", " ", re.sub(r"\$[^$\n]+\$", " ", HTML_HEADING.sub(" ", text)))
    return "\n".join("" if MD_HEADING.match(line) else line for line in text.splitlines())


def sentences(prose: str) -> list[str]:
    """Paragraphs, list items and table rows, each split into sentences (none runs across blocks)."""
    blocks: list[list[str]] = [[]]
    for line in prose.splitlines():
        if not line.strip() or re.match(r"^\s*(?:[*+-]\s|\d+[.)]\s|\|)", line):
            blocks.append([])
        blocks[-1].append(line)
    found = []
    for block in blocks:
        pieces = re.split(r"(?<=[.!?])\s+", " ".join(block).strip())
        start = len(found)
        for piece in pieces:
            if len(found) > start and ABBREVIATION.search(found[-1]):
                found[-1] += " " + piece
            else:
                found.append(piece)
    return [s for s in found if s]


def figures(source: str) -> list[str]:
    """Figures of a markdown cell that must agree with the run."""
    found = [m.group(0).strip() for s in sentences(markdown_prose(source)) if not CITATION.search(s)
             for m in FIGURE.finditer(s)]
    return list(dict.fromkeys(found))


def run_numbers(code) -> list[float]:
    """Sorted numbers of the code cells' outputs."""
    values = set()
    for _, cell in code:
        for output in cell.get("outputs", []):
            values.update(float(m.group(0).replace(",", "")) for m in OUTPUT_NUMBER.finditer(output_text(output)))
    return sorted(values)


def agrees(figure: str, numbers: list[float]) -> bool:
    """Whether the run has the figure's number, or (for `M`, `B`, `k`, `%`) one that rounds to it scaled."""
    m = FIGURE.fullmatch(figure)
    digits, unit = m.group("number").replace(",", ""), (m.group("unit") or "").strip()
    value, scale = float(digits), UNIT_SCALE.get(unit)
    at = bisect.bisect_left(numbers, value)
    if at < len(numbers) and numbers[at] == value:
        return True
    if scale is None:
        return False
    tolerance = 0.5 * 10 ** -len(digits.partition(".")[2]) * (1 + 1e-9)
    at = bisect.bisect_left(numbers, (value - tolerance) * scale)
    return at < len(numbers) and numbers[at] <= (value + tolerance) * scale


def check_markdown_figures(nb, code) -> list[str]:
    numbers = run_numbers(code)
    return [f"cell {i} (markdown): figure {figure!r} is not in any code output (print it from the run, "
            "write a setting as inline code, or cite its source in the sentence)"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for figure in figures(cell.source) if not agrees(figure, numbers)]



def generated_markdown(cell) -> int:
    """Length of the longest `text/markdown` output of a code cell."""
    return max([len(text_of(o.get("data", {}).get("text/markdown", "")).strip()) for o in cell.get("outputs", [])],
               default=0)


def check_conclusions(nb) -> list[str]:
    headings = heading_positions(nb)
    names = [normalise(h) for _, h in headings]

    def find(heading: str, start: int = 0) -> int | None:
        return next((k for k in range(start, len(names)) if normalise(heading) in names[k]), None)

    s1 = find(SECTION_1)
    s2 = find(SECTION_2, 0 if s1 is None else s1 + 1)
    p3 = find(PART_3, 0 if s2 is None else s2 + 1)
    failures = []
    for anchor, start, end, where in [(SECTION_1, s1, s2, f"between {SECTION_1!r} and {SECTION_2!r}"),
                                      (PART_3, p3, None, f"after {PART_3!r}")]:
        if start is None:
            failures.append(f"no 'Conclusions' heading {where} (heading {anchor!r} missing)")
            continue
        found = [k for k in range(start + 1, len(names) if end is None else end) if "conclusion" in names[k]]
        if not found:
            last = len(nb.cells) - 1 if end is None else max(headings[start][0], headings[end][0] - 1)
            failures.append(f"cells {headings[start][0]}-{last}: no 'Conclusions' heading {where} (add one, followed "
                            "by a cell that displays Markdown written from the run)")
        for k in found:
            i = headings[k][0]
            stop = headings[k + 1][0] if k + 1 < len(headings) else len(nb.cells)
            if not any(c.cell_type == "code" and generated_markdown(c) >= MIN_CONCLUSIONS for c in nb.cells[i + 1 : stop]):
                failures.append(
                    f"cell {i} (markdown): conclusions heading {headings[k][1]!r} is not followed, before the next "
                    f"heading, by a code cell displaying Markdown of at least {MIN_CONCLUSIONS} characters written "
                    "from the run (display(Markdown(...)))"
                )
    return failures


def check_header(nb) -> list[str]:
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    header = [i for i in range(first_code) if nb.cells[i].cell_type == "markdown"]
    text = " ".join(" ".join(nb.cells[i].source.split()) for i in header).casefold()
    missing = " and ".join(repr(f) for f in HEADER_FIELDS if f.casefold() not in text)
    if not missing:
        return []
    where = f"cells {header[0]}-{header[-1]} (markdown)" if len(header) > 1 else (
        f"cell {header[0]} (markdown)" if header else "cell 0")
    return [f"{where}: header before the first code cell lacks the seed's {missing} field(s)"]


TITLE = re.compile(r"^#\s*@title\b(.*)$")  # Colab's form title: `# @title Text { display-mode: "form" }`
TODO_TAG, PARAMETERS_TAG = "todo", "parameters"
MAP_LINK = re.compile(r"\[[^\]]*\]\(\s*#([^)\s]+)\s*\)")
HTML_LINK = re.compile(r"<a\b[^>]*?\bhref\s*=\s*([\"'])#(.*?)\1", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*([\"'])(.*?)\1[^>]*>", re.IGNORECASE)


def form_title(source: str) -> str | None:
    """The text of a `# @title` first line (None when the first line is no title), without Colab's `{...}` params."""
    m = TITLE.match(source.split("\n", 1)[0].strip())
    return None if m is None else re.sub(r"\{[^{}]*\}\s*$", "", m.group(1)).strip()


FOLDING_KEYS = ('"cellView": "form"', '"jupyter": {"source_hidden": true}')  # Colab's, then Jupyter's


def folding(cell) -> dict[str, bool]:
    """Which of the folding metadata keys the cell has."""
    hidden = (cell.metadata.get("jupyter") or {}).get("source_hidden") is True
    return dict(zip(FOLDING_KEYS, (cell.metadata.get("cellView") == "form", hidden)))


def check_folding(nb) -> list[str]:
    """Support code folded (`# @title` line and both metadata keys), answers to the seed's TODOs (tag `todo`) open."""
    failures = []
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or PARAMETERS_TAG in tags or not cell.source.strip():
            continue
        where, title, keys = label(i, cell), form_title(cell.source), folding(cell)
        missing = " and ".join(key for key, present in keys.items() if not present)
        if TODO_TAG in tags:
            folded = ["a `# @title` first line"] * (title is not None) + [key for key, present in keys.items() if present]
            if folded:
                failures.append(f"{where}: a `{TODO_TAG}` cell is folded ({', '.join(folded)}): an answer to the "
                                "seed's TODOs stays open")
        elif title is None and not cell.get("outputs"):
            failures.append(f"{where}: support cell (no outputs, not tagged `{TODO_TAG}`) is not folded: make its first "
                            f"line `# @title <what it does>`{f' and add {missing} to its metadata' if missing else ''}, "
                            f"or tag it `{TODO_TAG}` if it answers a TODO of the seed")
        if title is not None and TODO_TAG not in tags:
            if not title:
                failures.append(f"{where}: `# @title` without text (say what the folded cell does)")
            if missing:
                failures.append(f"{where}: `# @title` cell lacks {missing} in its metadata (folded in Colab and Jupyter)")
    return failures


def internal_links(source: str) -> list[str]:
    """Anchors of a markdown cell's `[text](#anchor)` and `<a href="#anchor">` links, outside code."""
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", " ", source, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"(`+)(?:(?!\1).)+?\1", " ", text, flags=re.DOTALL)
    return list(dict.fromkeys(MAP_LINK.findall(text) + [m.group(2) for m in HTML_LINK.finditer(text)]))


def check_map(nb) -> list[str]:
    """Every internal link of the markdown (the grader's map and any other) has an explicit HTML anchor."""
    anchors = {m.group(2) for cell in nb.cells if cell.cell_type == "markdown" for m in HTML_ANCHOR.finditer(cell.source)}
    return [f'cell {i} (markdown): link to #{anchor} has no anchor <a id="{anchor}"></a> in any markdown cell'
            for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for anchor in internal_links(cell.source) if anchor not in anchors]


def check(nb_or_path, *, seed: list[str] | None = None, max_bytes: int = MAX_BYTES) -> list[str]:
    """All failures of the notebook (a path or a NotebookNode); empty when it passes."""
    if isinstance(nb_or_path, (str, Path)):
        size, nb = Path(nb_or_path).stat().st_size, nbformat.read(nb_or_path, as_version=4)
    else:
        nb, size = nb_or_path, len(json.dumps(nb_or_path, indent=1, sort_keys=True, ensure_ascii=False).encode())
    failures = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        failures.append(f"invalid nbformat: {error.message}")
    if size > max_bytes:
        failures.append(f"file is {size / 2**20:.2f} MiB, over the {max_bytes / 2**20:.2f} MiB limit")
    failures += [f"notebook metadata has `{key}` (run tools/clean_notebook.py)"
                 for key in ("widgets", "papermill") if key in nb.metadata]
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    failures += [f"cell {i}: empty code cell (delete it)" for i, c in code if not c.source.strip()]
    code = [(i, c) for i, c in code if c.source.strip()]
    if not code:
        failures.append("notebook has no code cells")
    failures += check_cells(nb, code)
    failures += check_run_summary(code)
    failures += check_headings(nb, SEED_HEADINGS if seed is None else seed)
    failures += check_header(nb)
    failures += check_folding(nb)
    failures += check_map(nb)
    failures += check_conclusions(nb)
    failures += check_markdown_figures(nb, code)
    failures += check_fingerprint(nb)
    return failures


def summary(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    code, render = [c for c in nb.cells if c.cell_type == "code"], nb.metadata.get(KEY, {})
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    return (f"OK {path.name}: {len(code)} code cells executed 1..{len(code)}, {images} plot image(s), seed headings "
            f"in order, rendered ({render.get('profile')}, {render.get('finished')}) from these cells, "
            f"{path.stat().st_size / 2**20:.2f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--max-mb", type=float, default=MAX_BYTES / 2**20)
    args = parser.parse_args(argv)
    if not args.notebook.exists():
        print(f"FAILED {args.notebook}: no such file")
        return 1
    failures = check(args.notebook, max_bytes=int(args.max_mb * 2**20))
    if failures:
        print(f"FAILED {args.notebook}: {len(failures)} problem(s)")
        print("\n".join(f"  - {failure}" for failure in failures))
        return 1
    print(summary(args.notebook))
    return 0


if __name__ == "__main__":
    sys.exit(main())
