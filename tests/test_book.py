import html
import re
from pathlib import Path

import nbformat
import pytest

from metalib import book, student

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    return out, book.build_book(CHAPTERS, out)


def test_index_lists_every_chapter_with_goals_and_run_time(site):
    _, index = site
    text = index.read_text()
    links = re.findall(r'<a href="([^"]+)">', text)
    assert links == [f"{p.stem}.html" for p in CHAPTERS]  # relative: opens from the file system
    for path in CHAPTERS:
        summary = book.chapter_summary(nbformat.read(path, as_version=4))
        assert summary["title"].split(" · ")[0] == path.stem[:2]
        assert len(summary["goals"]) >= 3
        assert summary["title"] in text.replace("&#x27;", "'")
    assert text.count("<li>") == sum(
        len(book.chapter_summary(nbformat.read(p, as_version=4))["goals"]) for p in CHAPTERS
    )


def test_each_page_holds_its_chapter_and_its_plots_inline(site):
    out, _ = site
    for path in CHAPTERS:
        page = (out / f"{path.stem}.html").read_text()
        nb = student.student_version(nbformat.read(path, as_version=4))
        plots = sum(
            "image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
        )
        assert page.count("data:image/png;base64,") >= plots > 0
        assert 'src="/' not in page and "file://" not in page  # nothing outside the page


def test_a_notebook_without_the_chapter_conventions_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Notes\nno goals here")]
    path = tmp_path / "notes.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="Learning goals"):
        book.build_book([path], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no notebook at"):
        book.build_book([tmp_path / "missing.ipynb"], tmp_path / "out")


def text_of(page):
    """A page's text: tags (code is highlighted span by span) removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def solution_lines(path):
    """A distinctive line of each solution cell of a chapter (its longest)."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if student.is_solution(c)]
    return [max(c.source.splitlines(), key=len) for c in cells]


def test_the_public_book_has_no_solution_and_the_instructors_has_them_all(site, tmp_path):
    out, _ = site
    instructor = tmp_path / "instructor"
    book.build_book(CHAPTERS, instructor, solutions=True)
    found = 0
    for path in CHAPTERS:
        public = text_of(out / f"{path.stem}.html")
        full = text_of(instructor / f"{path.stem}.html")
        for line in solution_lines(path):
            assert line.strip() not in public, (path.name, line)
            assert line.strip() in full, (path.name, line)
            found += 1
        placeholders = public.count("exercise left for you")
        assert placeholders == len(student.solution_starts(nbformat.read(path, as_version=4).cells))
    assert found >= 20, "the chapters have many solutions"


def test_every_page_links_to_the_contents_and_its_neighbours(site):
    out, _ = site
    for at, path in enumerate(CHAPTERS):
        page = (out / f"{path.stem}.html").read_text()
        assert page.count('<a href="index.html">contents</a>') == 2  # above and below
        prev = re.findall(r'<a href="([^"]+)" rel="prev">', page)
        following = re.findall(r'<a href="([^"]+)" rel="next">', page)
        assert prev == ([f"{CHAPTERS[at - 1].stem}.html"] * 2 if at else [])
        last = at == len(CHAPTERS) - 1
        assert following == ([] if last else [f"{CHAPTERS[at + 1].stem}.html"] * 2)
