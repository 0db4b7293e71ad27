"""The report in a real browser: headless Chromium (Debian's `chromium`, installed by
tests/integration/browser/setup.sh) loads results/report/index.html without errors, every image has a
size, and a screenshot of the whole page is kept under the results (and, where SPA_ARTEFACTS is set, as
$SPA_ARTEFACTS/report/screenshot.png for CI).

Skipped, with the reason, where Chromium cannot be had (no root, no apt); with SPA_BROWSER_TESTS=require
(as .ci/run sets) that is a failure instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spa.cli import main
from tests.integration.browser.page_check import check_page, problems
from tests.report.fake_results import make_results

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "tests" / "integration" / "browser" / "setup.sh"


def _unavailable(reason: str):
    """Skip, printing why; under SPA_BROWSER_TESTS=require (.ci/run) fail instead."""
    if os.environ.get("SPA_BROWSER_TESTS") == "require":
        pytest.fail(f"headless Chromium required but not available: {reason}")
    print(f"\nbrowser test skipped: {reason}", file=sys.stderr)
    pytest.skip(f"no headless Chromium here: {reason}")


@pytest.fixture(scope="module")
def browser():
    run = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if run.returncode != 0 or not run.stdout.strip():
        _unavailable(((run.stderr or run.stdout).strip().splitlines() or ["setup.sh failed"])[-1])
    return run.stdout.strip().splitlines()[-1]


def keep_screenshot(page: Path, shot: Path) -> None:
    """Copy the page and its screenshot to $SPA_ARTEFACTS/report/ when CI asks for artefacts."""
    artefacts = os.environ.get("SPA_ARTEFACTS")
    if artefacts:
        target = Path(artefacts) / "report"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "screenshot.png")
        shutil.copy(page, target / "index.html")


def test_report_loads_in_chromium_with_every_image_drawn(browser, tmp_path):
    results = make_results(tmp_path)
    shutil.rmtree(results / "validate")  # the deliberately broken stage of the unit tests
    assert main(["report", "--results", str(results)]) == 0
    page = results / "report" / "index.html"
    shot = results / "report" / "screenshot.png"
    result = check_page(page, shot, browser=browser)
    keep_screenshot(page, shot)
    assert problems(result) == []
    # class2d 1, fsc 1, postprocess 2, the map's sections and surface: all decoded, none empty
    assert len(result["images"]) == 6
    assert all(img["width"] > 100 and img["height"] > 100 for img in result["images"]), result["images"]
    assert result["title"] == f"spa report: {results.resolve().name}"
    assert result["height"] > 2000  # the whole page laid out, not an error page
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_check_sees_a_broken_page(browser, tmp_path):
    """The same check on a page with a missing image, a corrupt one and a script error reports all three."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                    '<img src="missing.png" alt="gone"><img src="data:image/png;base64,iVBORw0KGgo=" alt="corrupt">'
                    "<script>undefinedFunction();</script></body></html>")
    found = problems(check_page(page, browser=browser))
    assert any("gone" in p for p in found) and any("corrupt" in p for p in found)
    assert any("undefinedFunction" in p for p in found)
