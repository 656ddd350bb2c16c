"""The course as a static HTML site: an index page and one page per chapter.

``make html`` (``python -m metalib.book --out build/book notebooks/*.ipynb``) converts
each chapter with its committed full-mode outputs (nothing is re-run) and writes an
``index.html`` with the chapter table: title, learning goals and run time, read from each
chapter's opening cell. Plots are embedded in the pages as data URIs and the links are
relative, so the folder opens from the file system with no server; equations are typeset
by MathJax and widgets drawn by their script, both loaded from a CDN when online. Each
page links to the index and to the previous and next chapters.

The book is built from the student versions (:mod:`metalib.student`): every solution cell
is a placeholder, so the site can go on a course page as it is. ``--solutions`` (``make
html-instructor``) keeps them, for the instructor.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters.markdown import markdown2html

from metalib import files
from metalib.student import student_version


def chapter_summary(notebook: nbformat.NotebookNode) -> dict[str, object]:
    """Title, learning goals and run time from a chapter's first markdown cell.

    Raises:
        ValueError: if the first cell has no ``# NN · Title`` heading, or no learning goals
            or run time paragraph (the chapter convention of ``STYLE.md``).
    """
    first = next((c.source for c in notebook.cells if c.cell_type == "markdown"), "")
    title = re.search(r"^# (.+)$", first, flags=re.MULTILINE)
    goals = re.search(r"\*\*Learning goals\.\*\*[^\n]*\n((?:- .+\n?)+)", first)
    run_time = re.search(r"\*\*Run time\.\*\* (.+)", first)
    if not (title and goals and run_time):
        raise ValueError(
            "a chapter's first cell must have a '# NN · Title' heading, a **Learning goals.** "
            f"list and a **Run time.** paragraph; this one starts {first[:60]!r}."
        )
    return {
        "title": title.group(1).strip(),
        "goals": [g[2:].strip() for g in goals.group(1).strip().splitlines()],
        "run_time": run_time.group(1).strip(),
    }


def _inline(markdown: str) -> str:
    """Markdown of one line as HTML without the enclosing paragraph."""
    return re.sub(r"^<p>|</p>\s*$", "", markdown2html(markdown).strip())


def index_page(chapters: list[tuple[str, dict]]) -> str:
    """The index: ``chapters`` is ``[(page file name, chapter_summary), ...]`` in order."""
    rows = []
    for page, summary in chapters:
        goals = "".join(f"<li>{_inline(g)}</li>" for g in summary["goals"])
        rows.append(
            f'<tr><td><a href="{html.escape(page)}">{html.escape(summary["title"])}</a></td>'
            f"<td><ul>{goals}</ul></td><td>{_inline(summary['run_time'])}</td></tr>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>metalib: a course on meta-learning</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
        "td{vertical-align:top;padding:.5em;border-bottom:1px solid #ddd}"
        "th{text-align:left;padding:.5em}</style></head><body>"
        "<h1>metalib: a course on meta-learning</h1>"
        "<p>From MAML on sinusoid regression to Prototypical Networks on Omniglot. Each "
        "chapter page shows the outputs of a full-mode run; to run and change them, open "
        "the notebooks in JupyterLab (<code>make lab</code>).</p>"
        "<table><tr><th>chapter</th><th>learning goals</th><th>run time</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def navigation(pages: list[tuple[str, str]], at: int) -> str:
    """Links from page ``at`` of ``pages`` (``[(file name, title), ...]``) to the index and
    to the previous and next chapters, as an HTML ``<nav>`` block."""
    links = ['<a href="index.html">contents</a>']
    if at > 0:
        page, title = pages[at - 1]
        links.insert(0, f'<a href="{html.escape(page)}" rel="prev">← {html.escape(title)}</a>')
    if at < len(pages) - 1:
        page, title = pages[at + 1]
        links.append(f'<a href="{html.escape(page)}" rel="next">{html.escape(title)} →</a>')
    style = "display:flex;justify-content:space-between;font-family:sans-serif;padding:1em 2em"
    return f'<nav class="metalib-nav" style="{style}">' + "".join(links) + "</nav>"


def build_book(
    notebooks: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    solutions: bool = False,
) -> Path:
    """Write one HTML page per notebook and ``index.html`` into ``out``; return the index.

    Args:
        solutions: keep the solution cells (the instructor's book); by default each is
            replaced by the student version's placeholder.

    Raises:
        FileNotFoundError: if a notebook does not exist.
        ValueError: if a notebook lacks the chapter conventions (see :func:`chapter_summary`).
    """
    paths = [Path(p) for p in notebooks]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no notebook at {path}: give the chapters' .ipynb files.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    notebooks_read = [nbformat.read(path, as_version=4) for path in paths]
    summaries = [chapter_summary(notebook) for notebook in notebooks_read]
    pages = [(f"{path.stem}.html", s["title"]) for path, s in zip(paths, summaries)]
    for at, (path, notebook) in enumerate(zip(paths, notebooks_read)):
        shown = notebook if solutions else student_version(notebook)
        body, _ = exporter.from_notebook_node(shown, resources={"metadata": {"name": path.stem}})
        nav = navigation(pages, at)
        top = re.search(r"<body[^>]*>", body).end()  # the links above and below the chapter
        body = body[:top] + nav + body[top:].replace("</body>", nav + "</body>", 1)
        files.atomic_write(out / pages[at][0], body.encode())
    chapters = [(page, summary) for (page, _), summary in zip(pages, summaries)]
    return files.atomic_write(out / "index.html", index_page(chapters).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metalib.book",
        description="Write the chapters, with their committed outputs, as a static HTML site.",
    )
    parser.add_argument("notebooks", nargs="+", help="the chapters' .ipynb files, in order")
    parser.add_argument("--out", default="build/book", help="folder to write (default: build/book)")
    parser.add_argument(
        "--solutions",
        action="store_true",
        help="keep the solution cells (the instructor's book); default: the student versions",
    )
    args = parser.parse_args(argv)
    try:
        index = build_book(args.notebooks, args.out, solutions=args.solutions)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {index}: open it in a browser")
    return 0


__all__ = ["build_book", "chapter_summary", "index_page", "navigation"]


if __name__ == "__main__":
    sys.exit(main())
