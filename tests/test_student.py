import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from metalib import student

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _notebook():
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("answer = 42\nprint(answer)")
    solution.metadata["tags"] = ["solution"]
    solution.outputs = [nbformat.v4.new_output("stream", text="42\n")]
    solution.execution_count = 3
    other = nbformat.v4.new_code_cell("x = 1")
    other.metadata["tags"] = ["keep"]
    other.outputs = [nbformat.v4.new_output("stream", text="kept\n")]
    markdown = nbformat.v4.new_markdown_cell("solution")  # the word, not the tag
    markdown.metadata["tags"] = ["solution"]  # a markdown cell is never a solution cell
    nb.cells = [nbformat.v4.new_code_cell("setup = True"), other, markdown, solution]
    return nb


def test_student_version_replaces_every_tagged_code_cell_and_no_other():
    nb = _notebook()
    result = student.student_version(nb)
    assert [c.source for c in result.cells[:3]] == [c.source for c in nb.cells[:3]]
    assert result.cells[1].outputs == nb.cells[1].outputs
    assert result.cells[3].source == student.PLACEHOLDER
    assert result.cells[3].outputs == [] and result.cells[3].execution_count is None
    assert nb.cells[3].source.startswith("answer = 42")  # the input is left alone


def _exercises_index(nb) -> int:
    """Where a chapter's "## Exercises" cell is."""
    return next(
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "markdown" and "## Exercises" in c.source
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_a_solution_cell_after_its_exercises(path):
    nb = nbformat.read(path, as_version=4)
    exercises = _exercises_index(nb)
    starts = student.solution_starts(nb.cells)
    assert starts and min(starts) > exercises, f"{path.name} has no solution cell"
    result = student.student_version(nb)
    # A solution of several cells in a row leaves one placeholder; every other cell stays.
    kept = [c for i, c in enumerate(nb.cells) if i in starts or not student.is_solution(c)]
    assert len(result.cells) == len(kept)
    for before, after in zip(kept, result.cells):
        if student.is_solution(before):
            assert after.source == student.PLACEHOLDER and after.outputs == []
        else:
            assert after == before


SOLUTION_HEADER = re.compile(r"\*\*A solution to exercise (\d+)\.\*\*")
SAYS_SOLVED = re.compile(r"Exercises? (.+?) ha(?:s a solution|ve solutions) below\.")


def _numbers(text: str) -> set[int]:
    """The exercise numbers of "1", "2 and 3", "1, 2, 3 and 5" or "1 to 4"."""
    numbers = set()
    for part in re.split(r", | and ", text):
        low, _, high = part.partition(" to ")
        numbers |= set(range(int(low), int(high or low) + 1))
    return numbers


def test_numbers_reads_lists_and_ranges():
    assert _numbers("3") == {3}
    assert _numbers("1, 2, 3 and 5") == {1, 2, 3, 5}
    assert _numbers("1 to 4") == {1, 2, 3, 4}


def _teaching_table() -> dict[str, set[int]]:
    """Chapter number → the exercises docs/teaching.md says have a solution."""
    teaching = (ROOT / "docs" / "teaching.md").read_text()
    rows = re.findall(r"^\| (\d\d) \| ([\d, ]+) \| .+ \|$", teaching, flags=re.M)
    return {chapter: _numbers(solved) for chapter, solved in rows}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_what_the_exercises_say_has_a_solution_has_one(path):
    """The exercises cell, the solution headers, the tagged cells and teaching.md agree."""
    nb = nbformat.read(path, as_version=4)
    said = SAYS_SOLVED.search(nb.cells[_exercises_index(nb)].source)
    assert said, f"{path.name}: the exercises cell does not say which exercises have solutions"
    headed = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and (found := SOLUTION_HEADER.fullmatch(cell.source)):
            assert student.is_solution(nb.cells[i + 1]), f"{path.name}: {cell.source} has no code"
            headed.append(int(found.group(1)))
    assert headed == sorted(headed), f"{path.name}: solutions out of order {headed}"
    assert set(headed) == _numbers(said.group(1)), f"{path.name}: {said.group(0)!r} vs {headed}"
    assert len(headed) == len(student.solution_starts(nb.cells))
    assert _teaching_table()[path.name[:2]] == set(headed), "docs/teaching.md's table is stale"


def test_writing_is_deterministic_and_refuses_to_overwrite_the_chapters(tmp_path):
    first = student.write_student_versions(CHAPTERS[:2], tmp_path / "a")
    second = student.write_student_versions(CHAPTERS[:2], tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in CHAPTERS[:2]]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    with pytest.raises(ValueError, match="would overwrite"):
        student.write_student_versions(CHAPTERS[:1], CHAPTERS[0].parent)
    with pytest.raises(FileNotFoundError, match="no notebook at"):
        student.write_student_versions([tmp_path / "missing.ipynb"], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_command_line_writes_every_chapter(tmp_path, capsys):
    assert student.main([*map(str, CHAPTERS), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in CHAPTERS]
    assert "solutions replaced" in capsys.readouterr().out
    assert student.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_version_runs_in_quick_mode_up_to_its_first_placeholder(path, monkeypatch):
    """What a student gets runs: every cell before the first exercise placeholder."""
    head = student.up_to_first_placeholder(student.student_version(nbformat.read(path, 4)))
    assert head.cells and all(c.source != student.PLACEHOLDER for c in head.cells)
    monkeypatch.setenv("METALIB_QUICK", "1")
    for name in ("METALIB_DATA", "METALIB_CACHE"):  # relative settings are from the repository
        if name in os.environ:
            monkeypatch.setenv(name, str((ROOT / os.environ[name]).resolve()))
    client = NotebookClient(
        head, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
