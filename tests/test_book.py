import re
from pathlib import Path

import nbformat
import pytest

from metalib import book

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
        nb = nbformat.read(path, as_version=4)
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
