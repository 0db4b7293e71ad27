"""Open an HTML page in headless Chromium and report what a person would see go wrong: script errors,
console messages, resources that fail to load, images with no size; and take a screenshot of it.

Uses only the browser's command line (no DevTools client, no Playwright): a copy of the page with a small
probe script added at the top of <head> is loaded with ``--dump-dom``; on the page's load event the probe
writes, into the DOM, every image's natural size and every error it caught (window errors, failed
resource loads, console.error calls); the dumped DOM is then read back.  Chromium's own log
(``--enable-logging=stderr``) adds any console message the page printed.

By hand:  python tests/integration/browser/page_check.py results/report/index.html [screenshot.png]
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = """<script id="spa-probe-script">
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && t.tagName) {
      errors.push("failed to load <" + t.tagName.toLowerCase() + "> " + String(t.src || t.href || "").slice(0, 120));
    } else {
      errors.push("script error: " + e.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection: " + e.reason); });
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = [];
    for (var i = 0; i < document.images.length; i++) {
      var img = document.images[i];
      images.push({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, complete: img.complete});
    }
    var out = document.createElement("pre");
    out.id = "spa-probe";
    out.textContent = JSON.stringify({images: images, errors: errors,
                                      height: document.documentElement.scrollHeight, title: document.title});
    document.body.appendChild(out);
  });
})();
</script>"""

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--hide-scrollbars"]
WIDTH = 1280
MAX_HEIGHT = 16000  # px of the full-page screenshot


def _with_probe(text: str) -> str:
    match = re.search(r"<head[^>]*>", text, flags=re.IGNORECASE)
    if match:
        return text[: match.end()] + PROBE + text[match.end():]
    return PROBE + text


def _console_lines(log: str) -> list[str]:
    """Console messages from Chromium's log (lines like '...:INFO:CONSOLE(12)] "message", source: ...')."""
    return [line.strip() for line in log.splitlines() if ":CONSOLE" in line]


def check_page(page, screenshot=None, browser: str | None = None, timeout: float = 60) -> dict:
    """Load ``page`` in headless Chromium.  Returns {"images": [{alt, width, height, complete}], "errors":
    [...], "console": [...], "height": px, "title": ...}; with ``screenshot`` also writes a full-page PNG there.
    Raises RuntimeError when the browser gives no answer."""
    page = Path(page).resolve()
    browser = browser or shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        raise RuntimeError("no chromium on PATH (tests/integration/browser/setup.sh installs it)")
    # the probe copy sits beside the page so that relative links resolve as they do for the page
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(_with_probe(page.read_text(encoding="utf-8")), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="spa-chromium-") as profile:
            run = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                                  "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                                 capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="spa-probe">(.*?)</pre>', run.stdout, flags=re.DOTALL)
    if not found:
        raise RuntimeError(f"{browser} returned no probe result (exit {run.returncode}): {run.stderr[-2000:]}")
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = _console_lines(run.stderr)
    if screenshot:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        height = max(600, min(int(result.get("height") or 0) + 40, MAX_HEIGHT))
        with tempfile.TemporaryDirectory(prefix="spa-chromium-") as profile:
            shot = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
                                   f"--screenshot={screenshot}", page.as_uri()],
                                  capture_output=True, text=True, timeout=timeout)
        if not screenshot.is_file():
            raise RuntimeError(f"{browser} wrote no screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}")
    return result


def problems(result: dict) -> list[str]:
    """What is wrong with a page from :func:`check_page`'s result ([] when nothing)."""
    out = list(result["errors"]) + [f"console: {line}" for line in result["console"]]
    out += [f"image {i + 1} ({img['alt'] or 'no alt'}) has no size" for i, img in enumerate(result["images"])
            if not img["width"] or not img["height"]]
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} PAGE.html [SCREENSHOT.png]")
    res = check_page(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    print(json.dumps({k: v for k, v in res.items() if k != "images"} | {"images": len(res["images"])}, indent=1))
    bad = problems(res)
    print("\n".join(bad) or "no problems")
    sys.exit(1 if bad else 0)
