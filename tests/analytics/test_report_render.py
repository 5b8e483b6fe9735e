"""The incident page renders in a real browser: headless Chromium (Debian package ``chromium``)
draws every plot (plotly's SVG roots appear in the DOM) and takes a non-trivial screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from kvledger.analytics import catalog, source
from kvledger.analytics.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--virtual-time-budget=8000"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium) - report render not checked")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(wedged_run, tmp_path):
    page = tmp_path / "incident.html"
    con = catalog.open_catalog(source.collect([wedged_run]), strict=True)
    write_report(con, str(page), title="render test")
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # One plotly root per figure once its JavaScript ran (none if plotly.js failed to load).
    assert dom.stdout.count('class="main-svg"') >= 5
    assert "WEDGED" in dom.stdout and "r0" in dom.stdout
    shot = tmp_path / "incident.png"
    res = _chromium("--window-size=1400,2600", f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few KB
