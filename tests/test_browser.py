"""The sliders in a real browser: JupyterLab, headless Chromium, a chapter run top to bottom.

Each test starts JupyterLab bound to 127.0.0.1 with a random token and temporary settings,
workspace and runtime folders, opens a chapter in Debian's Chromium through the
``playwright`` package (pointed at ``/usr/bin/chromium``; ``playwright install`` is never
used), runs all cells in quick mode, moves sliders of the chapter's panel, and asserts that
the panel's summary line and its plot changed. A screenshot goes to
``build/browser/<chapter>.png``. The server is stopped by its process id.

Skipped, with the reason, where Chromium or playwright is missing; ``.ci/run`` installs
Chromium so that CI runs them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "build" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _requirements() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "Chromium is not installed (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[maintainers]')"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server in quick mode: ``(base URL, token)``; stopped afterwards."""
    if why := _requirements():
        pytest.skip(f"browser tests skipped: {why}")
    home = tmp_path_factory.mktemp("lab")
    settings = home / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell, not only those in view, so that the panels can be found.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    docmanager = home / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    # Serve copies without outputs: quick-mode outputs must never be saved over the committed
    # chapters, and a prompt's number then shows that this run executed the cell.
    served = home / "root" / "notebooks"
    served.mkdir(parents=True)
    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        notebook.metadata.pop("widgets", None)
        nbformat.write(notebook, served / path.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "METALIB_QUICK": "1",
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    for name in ("METALIB_DATA", "METALIB_CACHE"):  # relative settings are from the repository
        if name in env:
            env[name] = str((ROOT / env[name]).resolve())
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served.parent}",
        "--expose-app-in-browser",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(home / 'server.log').read_text()}")
                time.sleep(0.5)
        yield base, token
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
        log.close()


# "error: <text>" once a cell has failed, true once every code cell has run (a number in
# its prompt) and the kernel is idle, false otherwise.
ALL_RUN_AND_IDLE = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    for (let i = 0; i < cells.length; i++) {
        const outputs = cells.get(i).type === 'code' ? cells.get(i).outputs.toJSON() : [];
        const error = outputs.find(o => o.output_type === 'error');
        if (error) return `error in cell ${i}: ${error.ename}: ${error.evalue}`;
    }
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
    const idle = document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']");
    const numbered = prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
    return prompts.length > 0 && idle !== null && numbered;
}"""

# True once the first code cell has started or finished running.
STARTED = """() => {
    const first = document.querySelector('.jp-CodeCell .jp-InputPrompt');
    return first !== null && /\\[(\\*|\\d+)\\]/.test(first.textContent);
}"""

# True once the open notebook's kernel is connected and idle (JupyterLab started with
# --expose-app-in-browser, as galata, JupyterLab's own browser tests, does).
KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


def _start_kernel(base: str, token: str, path: str) -> None:
    """Start the notebook's session through the REST API, as opening it would.

    The page then joins a running kernel: a fresh server otherwise may ask for a kernel
    in a dialog while its kernel list is still loading.
    """
    body = json.dumps(
        {"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}}
    )
    request = urllib.request.Request(
        f"{base}/api/sessions",
        data=body.encode(),
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status in (200, 201), response.status


def _wait_for_chapter(page, timeout_ms: int) -> None:
    """Wait until every cell has run and the kernel is idle; fail at once on a cell's error."""
    result = page.wait_for_function(ALL_RUN_AND_IDLE, timeout=timeout_ms, polling=1000)
    outcome = result.json_value()
    assert outcome is True, f"a cell failed in the browser: {outcome}"


def _drive(lab, chapter: str, sliders: list[tuple[str, str]]) -> None:
    """Open ``chapter``, run all cells, move each slider and check that its panel redraws.

    ``sliders`` holds ``(description, move)``: ``"drag 0.3"`` drags the slider's handle
    right by 30% of its track with the mouse; any other text is typed into its readout.
    """
    from playwright.sync_api import expect, sync_playwright

    base, token = lab
    root = hasattr(os, "getuid") and os.getuid() == 0
    with sync_playwright() as p:
        flags = ["--disable-dev-shm-usage", *(["--no-sandbox"] if root else [])]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            # A workspace of its own, reset: only this chapter is open.
            _start_kernel(base, token, f"notebooks/{chapter}.ipynb")
            page.goto(
                f"{base}/lab/workspaces/{chapter}/tree/notebooks/{chapter}.ipynb?reset&token={token}"
            )
            page.locator(".jp-Notebook:visible").first.wait_for(timeout=120_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=120_000
            )
            page.wait_for_function(KERNEL_READY, timeout=120_000, polling=500)
            dialog = page.locator(".jp-Dialog .jp-mod-accept")
            if dialog.count():  # a kernel chooser despite the running session: keep Python 3
                dialog.first.click()
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(STARTED, timeout=60_000, polling=500)
            # Wait for the whole chapter: its own cells also move the sliders once.
            _wait_for_chapter(page, 600_000)
            for description, move in sliders:
                label = page.locator(".widget-slider .widget-label", has_text=description).first
                label.wait_for(timeout=600_000)
                slider = label.locator("xpath=ancestor::div[contains(@class, 'widget-slider')][1]")
                panel = label.locator(
                    "xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]"
                )
                summary = panel.locator(".widget-html-content").first
                image = panel.locator("img").first
                expect(summary).not_to_be_empty(timeout=300_000)
                before = summary.inner_text(), image.get_attribute("src")
                slider.scroll_into_view_if_needed()
                if move.startswith("drag "):  # drag the handle by a fraction of the track
                    track = slider.locator(".noUi-target").first.bounding_box()
                    handle = slider.locator(".noUi-handle").first.bounding_box()
                    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
                    page.mouse.move(x, y)
                    page.mouse.down()
                    page.mouse.move(x + float(move[5:]) * track["width"], y, steps=8)
                    page.mouse.up()
                else:  # type a value into the slider's readout
                    slider.locator(".widget-readout").first.click()
                    page.keyboard.press("Control+A")
                    page.keyboard.type(move)
                    page.keyboard.press("Enter")
                expect(summary).not_to_have_text(before[0], timeout=300_000)
                page.wait_for_function(
                    "([img, src]) => img.getAttribute('src') !== src",
                    arg=[image.element_handle(), before[1]],
                    timeout=300_000,
                )
                assert summary.inner_text() != before[0], f"{description}: summary unchanged"
                assert image.get_attribute("src") != before[1], f"{description}: plot unchanged"
                _wait_for_chapter(page, 300_000)
            panel.scroll_into_view_if_needed()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{chapter}.png"))
        except Exception:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{chapter}-failure.png"))
            raise
        finally:
            browser.close()


@pytest.mark.timeout(1200)
def test_chapter_02_sliders_redraw_the_adaptation(lab):
    _drive(lab, "02_maml_sinusoid", [("K (support points)", "12"), ("inner steps", "drag 0.3")])
    assert (SCREENSHOTS / "02_maml_sinusoid.png").stat().st_size > 10_000


@pytest.mark.skipif(
    not (Path(os.environ.get("METALIB_DATA", ROOT / "data")) / "images_background.zip").exists()
    and not (ROOT / os.environ.get("METALIB_DATA", "data") / "images_background.zip").exists(),
    reason="Omniglot archives not in METALIB_DATA",
)
@pytest.mark.parametrize(
    ("chapter", "description", "value"),
    [("06_maml_omniglot", "inner steps", "drag 0.2"), ("07_prototypical_networks", "n_way", "12")],
)
@pytest.mark.timeout(1200)
def test_omniglot_chapter_slider_redraws_its_panel(lab, chapter, description, value):
    _drive(lab, chapter, [(description, value)])
    assert (SCREENSHOTS / f"{chapter}.png").stat().st_size > 10_000
