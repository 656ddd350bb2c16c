"""Student versions of the chapters: every solution cell replaced by a placeholder.

A chapter's exercises that ask for code have a solution right after them: one code cell,
or a few in a row, marked by the cell tag ``solution`` (cell metadata, not a comment
convention). The student version of a notebook is the same notebook with each solution
replaced by one cell holding :data:`PLACEHOLDER`, without outputs; every other cell, its
outputs included, is kept as it is. The result depends only on the input, so regenerating
gives the same bytes.

``make student`` (``python -m metalib.student --out student notebooks/*.ipynb``) writes
them; they are never committed. ``tests/test_student.py`` checks the rules above and runs
the student versions in quick mode up to their first placeholder.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from metalib import files

SOLUTION_TAG = "solution"
PLACEHOLDER = (
    "# Exercise: your solution here. The instructor's version of the course has one.\n"
    'raise NotImplementedError("exercise left for you: write your solution in this cell")'
)


def is_solution(cell: NotebookNode) -> bool:
    """Whether ``cell`` is a solution cell: a code cell tagged ``solution``."""
    return cell.cell_type == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def solution_starts(cells: Iterable[NotebookNode]) -> list[int]:
    """The indices of the cells that begin a solution: solution cells not right after one."""
    flags = [is_solution(cell) for cell in cells]
    return [i for i, flag in enumerate(flags) if flag and not (i and flags[i - 1])]


def student_version(notebook: NotebookNode) -> NotebookNode:
    """A copy of ``notebook`` with each solution (its consecutive solution cells) replaced
    by one placeholder cell."""
    student = copy.deepcopy(notebook)
    starts = set(solution_starts(student.cells))
    cells = []
    for i, cell in enumerate(student.cells):
        if is_solution(cell):
            if i not in starts:
                continue  # the rest of a solution that spans cells
            cell.source = PLACEHOLDER
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    student.cells = cells
    return student


def up_to_first_placeholder(student: NotebookNode) -> NotebookNode:
    """The cells of a student notebook before its first placeholder (all if it has none)."""
    head = copy.deepcopy(student)
    for i, cell in enumerate(head.cells):
        if cell.cell_type == "code" and cell.source == PLACEHOLDER:
            head.cells = head.cells[:i]
            break
    return head


def write_student_versions(
    notebooks: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> list[Path]:
    """Write the student version of each notebook into ``out`` under the same file name.

    Each file is written to a temporary file and renamed, so an interrupted run leaves
    every notebook either whole or as it was.

    Raises:
        FileNotFoundError: if a notebook does not exist.
        ValueError: if ``out`` is one of the notebooks' own folders (it would overwrite them).
    """
    paths = [Path(p) for p in notebooks]
    out = Path(out)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no notebook at {path}: give the chapters' .ipynb files.")
        if path.parent.resolve() == out.resolve():
            raise ValueError(
                f"out={out} is where {path.name} lives: the student versions would overwrite "
                "the chapters. Choose another folder, e.g. student/."
            )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        student = student_version(nbformat.read(path, as_version=4))
        text = nbformat.writes(student) + "\n"
        written.append(files.atomic_write(out / path.name, text.encode()))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metalib.student",
        description="Write student versions of notebooks: solution cells (tag 'solution') "
        "replaced by a placeholder, their outputs removed.",
    )
    parser.add_argument("notebooks", nargs="+", help="the chapters' .ipynb files")
    parser.add_argument("--out", default="student", help="folder to write (default: student)")
    args = parser.parse_args(argv)
    try:
        written = write_student_versions(args.notebooks, args.out)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        solutions = len(solution_starts(nbformat.read(path, as_version=4).cells))
        print(f"{path} ({solutions} solutions replaced)")
    return 0


__all__ = [
    "PLACEHOLDER",
    "SOLUTION_TAG",
    "is_solution",
    "solution_starts",
    "student_version",
    "up_to_first_placeholder",
    "write_student_versions",
]


if __name__ == "__main__":
    sys.exit(main())
