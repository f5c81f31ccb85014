"""`python -m oxloop --health-report`: the page it writes, rendered in a
real headless browser (Debian's Chromium) and checked in the screenshot:
both charts drew their lines, and the lines follow the program's load.

The report is an oxloop feature: it runs the program on oxloop only. Without
a browser the test is skipped, unless OXLOOP_REQUIRE_BROWSER=1 (`make test`
installs Chromium and sets it) makes that a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

#: A program with a known load: each second, for three seconds, a blocker
#: of 20, 80, then 40 ms, and busy spinning for 100, 500, then 250 ms.
APP = textwrap.dedent(
    """
    import asyncio, time

    def blocker(seconds):
        time.sleep(seconds)

    async def main():
        loop = asyncio.get_running_loop()
        for block, spin in ((0.02, 0.1), (0.08, 0.5), (0.04, 0.25)):
            start = time.monotonic()
            loop.call_soon(blocker, block)
            while time.monotonic() < start + spin:
                await asyncio.sleep(0)
            await asyncio.sleep(start + 1 - time.monotonic())

    asyncio.run(main())
    """
)

#: The series colours of `oxloop._report`.
LAG_MAX = (0xD6, 0x27, 0x28)
UTILIZATION = (0x2C, 0xA0, 0x2C)


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("OXLOOP_REQUIRE_BROWSER") == "1":
            pytest.fail("OXLOOP_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH")
    return found


def screenshot(page: str, png: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                "--window-size=1000,1300",
                f"--screenshot={png}",
                f"file://{page}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


def rows_of(image, colour) -> list[int]:
    """The rows (y) holding at least 20 pixels of `colour`."""
    width, height = image.size
    pixels = image.load()
    rows = []
    for y in range(height):
        if sum(1 for x in range(width) if pixels[x, y] == colour) >= 20:
            rows.append(y)
    return rows


def levels(rows: list[int]) -> list[int]:
    """Rows that are not the continuation of the row above: the distinct
    horizontal segments of a step chart."""
    return [y for i, y in enumerate(rows) if i == 0 or rows[i - 1] < y - 1]


def test_the_report_renders_its_charts_in_a_browser(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    browser()
    app = tmp_path / "app.py"
    app.write_text(APP)
    page = tmp_path / "report.html"
    subprocess.run(
        [sys.executable, "-m", "oxloop", "--health-report", "report.html", "app.py"],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    text = page.read_text()
    assert "<script" not in text  # self-contained, nothing to fetch or run
    assert "<td>blocker</td><td>app.py:4</td>" in text  # the slow-callback table
    assert text.count("data-chart=") == 2

    png = tmp_path / "report.png"
    screenshot(str(page), str(png))
    image = image_module.open(png).convert("RGB")
    # The lag chart's max line: one level per second (20, 80, 40 ms), so at
    # least three horizontal segments at different heights.
    lag = levels(rows_of(image, LAG_MAX))
    assert len(lag) >= 3, lag
    # Utilization: about 12, 58 and 29 % over the three seconds.
    use = levels(rows_of(image, UTILIZATION))
    assert len(use) >= 3, use
    # The two charts stand one above the other: lag first.
    assert max(lag) < min(use)


def test_a_program_that_ran_no_loop_gets_a_page_saying_so(tmp_path):
    (tmp_path / "app.py").write_text("print('no loop')\n")
    subprocess.run(
        [sys.executable, "-m", "oxloop", "--health-report=report.html", "--health", "app.py"],
        check=True,
        timeout=60,
        cwd=tmp_path,
        capture_output=True,
    )
    assert "No oxloop event loop ran." in (tmp_path / "report.html").read_text()


def test_a_report_option_without_a_file_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "oxloop", "--health-report"],
        timeout=60,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--health-report FILE" in done.stderr
