"""The committed outputs teach without a kernel: on GitHub, in the book, or in a notebook
opened without running it, a reader sees no traceback, no warning, no progress bar stuck
before its end, no stray return value of a plot, and a picture beside every widget."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
BAR = re.compile(r"(\d+)%\|.*\| *(\d+)/(\d+)")  # tqdm's "42%|████      | 21/50"


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def problems(notebook: dict) -> list[str]:
    found = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        for position, output in enumerate(outputs):
            kind, data = output["output_type"], output.get("data", {})
            where = f"cell {index}"
            if kind == "error":
                found.append(f"{where}: {output['ename']}: {output['evalue']}")
            if kind == "stream" and output["name"] == "stderr":
                found.append(f"{where}: stderr {text(output['text'])[:120]!r}")
            shown = text(output.get("text", "")) + text(data.get("text/plain", ""))
            for bar in BAR.finditer(shown):
                if WIDGET in data or bar.group(2) != bar.group(3):
                    found.append(f"{where}: a progress bar saved at {bar.group(0)!r}")
            if kind == "execute_result" and re.match(r"\[?<matplotlib|<Axes|Text\(", shown):
                found.append(f"{where}: a plot's return value printed: {shown[:60]!r}")
            pictured = any("image/png" in o.get("data", {}) for o in outputs[position + 1 :])
            if WIDGET in data and not BAR.search(shown) and not pictured:
                found.append(f"{where}: a widget with no picture after it")
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_outputs_read_without_a_kernel(path):
    assert problems(json.loads(path.read_text())) == []


def cell(*outputs) -> dict:
    return {"cells": [{"cell_type": "code", "source": "", "outputs": list(outputs)}]}


def test_each_kind_of_problem_is_found():
    widget = {"output_type": "display_data", "data": {WIDGET: {}, "text/plain": "VBox()"}}
    picture = {"output_type": "display_data", "data": {"image/png": "..."}}
    stuck = {"output_type": "display_data", "data": {"text/plain": "run: 10%|█   | 5/50 [00:01]"}}
    ended = {"output_type": "display_data", "data": {"text/plain": "run: 100%|███| 50/50 [00:09]"}}
    tqdm_widget = {
        "output_type": "display_data",
        "data": {WIDGET: {}, "text/plain": ended["data"]["text/plain"]},
    }
    warning = {"output_type": "stream", "name": "stderr", "text": "FutureWarning: old\n"}
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    axes = {"output_type": "execute_result", "data": {"text/plain": "<Axes: xlabel='step'>"}}
    assert problems(cell(widget, picture, ended)) == []
    assert len(problems(cell(picture, widget))) == 1
    assert len(problems(cell(stuck))) == 1
    assert len(problems(cell(tqdm_widget))) == 1  # saved as first drawn, whatever it says
    assert len(problems(cell(warning))) == 1
    assert len(problems(cell(error))) == 1
    assert len(problems(cell(axes))) == 1


MAX_CELL_LINES = 30  # a code cell a reader takes in at a glance


def long_cells(notebook: dict) -> list[str]:
    """The code cells over ``MAX_CELL_LINES`` lines, as 'cell N: L lines'."""
    return [
        f"cell {index}: {len(text(cell['source']).splitlines())} lines"
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and len(text(cell["source"]).splitlines()) > MAX_CELL_LINES
    ]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_code_cell_is_longer_than_a_screen(path):
    assert long_cells(json.loads(path.read_text())) == []


def test_a_long_cell_is_found():
    short, long = "\n".join(["x = 1"] * MAX_CELL_LINES), "\n".join(["x = 1"] * 31)
    notebook = {"cells": [{"cell_type": "code", "source": s} for s in (short, long)]}
    notebook["cells"].append({"cell_type": "markdown", "source": long})
    assert long_cells(notebook) == ["cell 1: 31 lines"]
