"""Open a report in headless Chromium: JavaScript errors, drawn charts and a screenshot.

No extra Python dependency: a copy of the page gets a probe script (errors captured through
`window.onerror`, `unhandledrejection` and `console.error`); after the charts render it writes
its verdict into the DOM, which `chromium --dump-dom` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL (parallel coordinates) in software, explicitly
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",  # timers run on virtual time: the probe's wait costs nothing
)

_CAPTURE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) {
  window.__errors.push("unhandled rejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
</script>"""

_PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var charts = Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
    // Drawn: plotly's SVG layers are visible and hold real content (axes, traces), not just
    // the empty frame plotly makes before it fails.
    var drawn = charts.filter(function (div) {
      var elements = 0, visible = false;
      div.querySelectorAll("svg.main-svg").forEach(function (svg) {
        var box = svg.getBoundingClientRect();
        visible = visible || (box.width > 0 && box.height > 0);
        elements += svg.querySelectorAll("*").length;
      });
      return visible && elements > 40 && div._fullData && div._fullData.length > 0;
    }).map(function (div) { return div.id; });
    var status = document.createElement("pre");
    status.style.display = "none";
    status.id = "batchlab-probe";
    status.textContent = JSON.stringify({
      errors: window.__errors,
      charts: charts.map(function (div) { return div.id; }),
      drawn: drawn,
      containers: document.querySelectorAll("section .chart").length
    });
    document.body.appendChild(status);
  }, 2000);
});
</script>"""


@dataclass(frozen=True)
class BrowserResult:
    errors: list[str]
    charts: list[str]  # ids of plotly chart containers
    drawn: list[str]  # ids of those holding a drawn (non-empty) SVG
    containers: int  # figure sections on the page


def _run(args: list[str], profile: Path) -> str:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout


def inspect(
    index: Path,
    work: Path,
    *,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 6400,
) -> BrowserResult:
    """Load a probed copy of `index` (next to it, so relative links hold) and read the verdict."""
    html = index.read_text(encoding="utf-8")
    probed = html.replace("<head>", "<head>" + _CAPTURE, 1).replace(
        "</body>", _PROBE + "</body>", 1
    )
    copy = index.with_name("probe-" + index.name)
    copy.write_text(probed, encoding="utf-8")
    profile = work / "chromium-profile"
    args = ["--dump-dom", copy.as_uri()]
    if screenshot is not None:  # one browser run does both
        args = [f"--window-size={width},{height}", f"--screenshot={screenshot}", *args]
    try:
        dom = _run(args, profile)
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="batchlab-probe">(.*?)</pre>', dom, re.S)
    if m is None:
        raise AssertionError("the probe never reported: page did not load or a script broke")
    data = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return BrowserResult(
        errors=list(data["errors"]),
        charts=list(data["charts"]),
        drawn=list(data["drawn"]),
        containers=int(data["containers"]),
    )
