"""Open a report in headless Chromium: JavaScript errors, drawn charts and a screenshot.

No extra Python dependency: a copy of the page gets a probe script (errors captured through
`window.onerror`, `unhandledrejection` and `console.error`); after the charts render it writes
its verdict into the DOM, which `chromium --dump-dom` prints.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
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
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: nothing can be fetched
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
window.__alerts = [];  // an injected <script>alert(...)</script> would land here
window.alert = function (m) { window.__alerts.push(String(m)); };
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
// Press every plotly button (e.g. the curves' x-axis switch) once, then back to the first.
function pressButtons() {
  var steps = [];
  document.querySelectorAll(".js-plotly-plot").forEach(function (div) {
    (div.layout.updatemenus || []).forEach(function (menu) {
      var buttons = menu.buttons || [];
      buttons.concat(buttons.slice(0, 1)).forEach(function (button) {
        steps.push(function () {
          return Plotly[button.method].apply(null, [div].concat(button.args));
        });
      });
    });
  });
  return steps.reduce(function (p, step) { return p.then(step); }, Promise.resolve())
    .then(function () { return steps.length; });
}
window.addEventListener("load", function () {
  pressButtons().catch(function (e) {
    window.__errors.push("button: " + String(e)); return -1;
  }).then(function (pressed) { setTimeout(function () { report(pressed); }, 500); });
});
function report(pressed) {
  {
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
      containers: document.querySelectorAll("section .chart").length,
      pressed: pressed,
      alerts: window.__alerts,
      // every URL the page fetched (scripts, styles, images, fonts, XHR): none, when it is
      // self-contained
      resources: performance.getEntriesByType("resource").map(function (r) { return r.name; }),
      title: document.querySelector("h1") ? document.querySelector("h1").textContent : "",
      legend: Array.prototype.map.call(
        document.querySelectorAll(".legendtext"), function (t) { return t.textContent; })
    });
    document.body.appendChild(status);
  }
}
</script>"""


@dataclass(frozen=True)
class BrowserResult:
    errors: list[str]
    charts: list[str]  # ids of plotly chart containers
    drawn: list[str]  # ids of those holding a drawn (non-empty) SVG
    containers: int  # figure sections on the page
    pressed: int  # plotly buttons pressed (each applied without error)
    alerts: list[str]  # calls to window.alert (an injected script ran)
    resources: list[str]  # URLs the page fetched after it was opened
    title: str  # the page's <h1> as the reader sees it
    legend: list[str]  # every plotly legend entry as drawn


def _run(args: list[str], profile: Path, timeout_s: float = 45.0) -> str:
    """Run Chromium in its own process group and end that group when done (it leaves helpers)."""
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"Chromium did not finish in {timeout_s:g} s: the page hangs") from err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return out


def inspect(
    index: Path,
    work: Path,
    *,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 6400,
) -> BrowserResult:
    """Load a probed copy of `index` (next to it, so relative links hold) and read the verdict."""
    page = index.read_text(encoding="utf-8")
    probed = page.replace("<head>", "<head>" + _CAPTURE, 1).replace(
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
    m = re.search(r'<pre id="batchlab-probe"[^>]*>(.*?)</pre>', dom, re.S)
    if m is None:
        raise AssertionError("the probe never reported: page did not load or a script broke")
    data = json.loads(html.unescape(m.group(1)))  # the DOM dump escapes &, < and > in text
    return BrowserResult(
        errors=list(data["errors"]),
        charts=list(data["charts"]),
        drawn=list(data["drawn"]),
        containers=int(data["containers"]),
        pressed=int(data["pressed"]),
        alerts=list(data["alerts"]),
        resources=list(data["resources"]),
        title=str(data["title"]),
        legend=list(data["legend"]),
    )
