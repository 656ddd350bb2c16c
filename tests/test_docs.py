"""The README fits on a screen or two, and every page it sends a reader to exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def relative_links(path):
    for target in LINK.findall(path.read_text()):
        if not re.match(r"[a-z]+:", target):
            yield target


def test_the_readme_is_under_12_kb():
    assert README.stat().st_size < 12_000, README.stat().st_size


def test_the_readme_links_every_page_of_docs_and_every_chapter():
    links = set(relative_links(README))
    for page in PAGES:
        assert f"docs/{page.name}" in links, page.name
    for chapter in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"notebooks/{chapter.name}" in links, chapter.name


def test_every_relative_link_of_the_readme_and_docs_resolves():
    checked = 0
    for source in [README, *PAGES]:
        for target in relative_links(source):
            file, _, anchor = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            assert path.exists(), f"{source.name}: {target}"
            if anchor:
                assert anchor in anchors(path), f"{source.name}: {target}"
            checked += 1
    assert checked >= 20


def test_the_sections_moved_out_of_the_readme_are_in_docs():
    headings = {
        "cli.md": ["## Command line", "## Settings"],
        "data.md": ["# Omniglot: data, splits and episodes"],
        "repository.md": ["## Map", "## Vocabulary", "## Developing", "### Browser tests"],
        "results.md": ["## Omniglot, the metric-based family", "## References"],
        "retraining.md": ["**Seeds.**", "**Reproducing them.**"],
        "benchmarks.md": [
            "**`benchmarks/meta_step_speed.py`**",
            "**`benchmarks/cli_process_speed.py`**",
        ],
    }
    for page, starts in headings.items():
        text = (ROOT / "docs" / page).read_text()
        for start in starts:
            assert re.search(rf"^{re.escape(start)}", text, flags=re.M), (page, start)
