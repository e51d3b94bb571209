"""The latent explorer in a real browser: real pointer and touch events move over the latent plane in
headless Chromium, and the image shown must be the decode of the grid cell nearest to the pointer.

The browser is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe`` with the
standard library only (JSON messages ended by NUL on file descriptors 3 and 4), so the events are the
browser's own input events (``Input.dispatchMouseEvent`` / ``Input.dispatchTouchEvent``), not events
made up by a script in the page. The run folder is synthetic: every cell of the 31 x 31 grid holds
different random pixels, so the right answer is known for each pointer position and a wrong cell, a
transposed grid or a flipped axis cannot pass.

Needs Debian's ``chromium`` (skipped without it, a failure under CI, as in test_report_browser.py).
Set ``VAELAB_REPORT_SCREENSHOT_DIR=DIR`` to keep a screenshot of the explorer (DIR/latent_explorer.png).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from test_report import make_run
from test_report_browser import _FLAGS, _chromium
from vaelab import sections as sec
from vaelab.report import build_report

pytestmark = pytest.mark.browser

G, C, H, W = 31, 3, 5, 6  # non-square RGB tiles: a swapped H and W or a lost channel shows


_LAUNCH = (
    "import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); os.dup2(b, 4); "
    "[os.close(f) for f in (a, b) if f > 4]; os.execv(sys.argv[3], sys.argv[3:])"
)


class DevTools:
    """A headless Chromium driven over the DevTools pipe: ``call`` sends a command and returns its
    result; events are collected in ``events`` and waited for with ``wait_event``."""

    def __init__(self, profile: Path, width: int = 1100, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads them on fd 3
        self._out_r, out_w = os.pipe()  # the browser writes replies on fd 4
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the browser's output, closed in close()
        self.proc = subprocess.Popen(
            # a small Python launcher puts the pipe ends on fds 3 and 4, where the browser expects them
            [sys.executable, "-c", _LAUNCH, str(cmd_r), str(out_w), _chromium(), *_FLAGS,
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer over the DevTools pipe")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                self._log.seek(0)
                raise RuntimeError(f"chromium closed the DevTools pipe: {self._log.read()[-2000:]!r}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._message(deadline)
            if m.get("id") == self._id:
                assert "error" not in m, f"{method}: {m['error']}"
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def open(self, url: str, width: int, height: int) -> None:
        target = self.call("Target.createTarget", session=False, url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", session=False, targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", session=False)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()


# What the page shows: the cell named on the plane, the z printed, the view's pixels at the centre of
# each enlarged pixel (H, W, RGB), and the plane's drawing area on the page (inside its border).
_STATE = """
(() => {
  const root = document.getElementById(%s), plane = root.querySelector('.vx-plane');
  const view = root.querySelector('.vx-view'), c = view.getContext('2d');
  const s = view.width / %d, px = [];
  for (let y = 0; y < %d; y++) for (let x = 0; x < %d; x++) {
    const p = c.getImageData(Math.floor((x + 0.5) * s), Math.floor((y + 0.5) * s), 1, 1).data;
    px.push(p[0], p[1], p[2]);
  }
  const b = plane.getBoundingClientRect();
  return {cell: plane.dataset.cell || null, z: root.querySelector('.vx-z').textContent, px: px,
          box: [b.left + plane.clientLeft, b.top + plane.clientTop, plane.clientWidth, plane.clientHeight]};
})()
"""


def explorer_state(tools: DevTools, block: str, h: int, w: int) -> dict[str, Any]:
    """The explorer ``block`` (its element id) as the page shows it now; ``px`` as (h, w, 3) uint8."""
    s = tools.js(_STATE % (json.dumps(block), w, h, w))
    s["px"] = np.array(s["px"], dtype=np.uint8).reshape(h, w, 3)
    return s


def screenshot(tools: DevTools, block: str, path: Path) -> None:
    """A PNG of the explorer ``block`` (plane, view, legend) at ``path``."""
    x, y, w, h = tools.js(f"(() => {{ const b = document.getElementById({json.dumps(block)})"
                          ".getBoundingClientRect(); return [b.left + scrollX, b.top + scrollY, "
                          "b.width, b.height]; })()")
    shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": x - 8, "y": y - 8, "width": w + 16, "height": h + 16, "scale": 1})
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def explorer_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sec.ExplorerSection]:
    """A full synthetic report whose explorer has different random pixels in every cell."""
    _chromium()  # skip (or fail under CI) before doing any work
    rng = np.random.default_rng(7)
    run, _ = make_run(tmp_path_factory.mktemp("runs"), "explorer", shape=(C, H, W), extra_png=False)
    codes = rng.normal(size=(400, 2)) * [1.5, 0.7]
    s = sec.ExplorerSection(
        name="explorer", title="Latent explorer", caption="synthetic decodes",
        images=rng.integers(0, 256, (G, G, C, H, W), dtype=np.uint8), grid=np.linspace(-2.5, 2.5, G),
        codes=codes, labels=rng.integers(0, 10, 400),
    )
    sec.write_sections(run, [s])
    return build_report(run), s


def _expected_cell(s: sec.ExplorerSection, fx: float, fy: float) -> tuple[int, int, float, float]:
    """(i, j, z1, z2) under the pointer at fractions (fx, fy) of the plane's width and height (from
    its top left): the plane spans the grid padded by half a cell, z1 rightwards, z2 upwards."""
    step = s.grid[1] - s.grid[0]
    lo, hi = s.grid[0] - step / 2, s.grid[-1] + step / 2
    z1, z2 = lo + fx * (hi - lo), hi - fy * (hi - lo)
    for z in (z1, z2):  # a point on a cell's edge has two nearest cells: the test must not pick one
        offset = (z - lo) / step % 1
        assert 0.05 < offset < 0.95, f"choose a position off the cells' edges (z = {z:.4f})"
    return int(np.abs(s.grid - z2).argmin()), int(np.abs(s.grid - z1).argmin()), z1, z2


# fractions of the plane: corners, centre, and points off the cell centres (near cell edges)
# each at least 0.05 cells (0.7 px) from a cell edge, where two cells are equally near
POSITIONS = [(0.02, 0.03), (0.97, 0.02), (0.53, 0.47), (0.03, 0.98), (0.98, 0.97), (0.31, 0.72),
             (0.66, 0.18)]


def test_the_shown_decode_follows_the_pointer_and_is_the_nearest_cells(
    explorer_page: tuple[Path, sec.ExplorerSection], tmp_path: Path
) -> None:
    page, s = explorer_page
    tools = DevTools(tmp_path / "profile")
    try:
        tools.open(page.as_uri(), 1100, 900)
        tools.js("document.getElementById('vx-explorer').scrollIntoView(); 0")
        first = explorer_state(tools, "vx-explorer", H, W)
        centre = G // 2  # G is odd: z = 0 is the grid point in the middle
        assert first["cell"] == f"{centre},{centre}", "before any pointer move the explorer shows z = (0, 0)"
        np.testing.assert_array_equal(first["px"], s.images[centre, centre].transpose(1, 2, 0))
        left, top, width, height = first["box"]
        assert width > 300 and height > 300, first["box"]
        shown = [first["px"]]
        for fx, fy in POSITIONS:
            x, y = left + fx * width, top + fy * height
            tools.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="none")
            state = explorer_state(tools, "vx-explorer", H, W)
            i, j, z1, z2 = _expected_cell(s, (x - left) / width, (y - top) / height)
            assert state["cell"] == f"{i},{j}", (fx, fy, state["cell"])
            # exact: the sprite is a lossless PNG without colour profile, drawn without smoothing
            np.testing.assert_array_equal(state["px"], s.images[i, j].transpose(1, 2, 0), err_msg=str((i, j)))
            assert state["z"].startswith(f"z = ({z1:.2f}, {z2:.2f})"), (state["z"], z1, z2)
            assert not np.array_equal(state["px"], shown[-1]), "the image did not change"
            shown.append(state["px"])
        if out := os.environ.get("VAELAB_REPORT_SCREENSHOT_DIR"):
            Path(out).mkdir(parents=True, exist_ok=True)
            screenshot(tools, "vx-explorer", Path(out) / "latent_explorer.png")
    finally:
        tools.close()


def test_a_touch_on_the_plane_shows_the_decode_under_the_finger(
    explorer_page: tuple[Path, sec.ExplorerSection], tmp_path: Path
) -> None:
    page, s = explorer_page
    tools = DevTools(tmp_path / "profile")
    try:
        tools.open(page.as_uri(), 1100, 900)
        tools.call("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=1)
        tools.js("document.getElementById('vx-explorer').scrollIntoView(); 0")
        left, top, width, height = explorer_state(tools, "vx-explorer", H, W)["box"]
        for fx, fy in [(0.21, 0.86), (0.81, 0.41)]:
            x, y = left + fx * width, top + fy * height
            tools.call("Input.dispatchTouchEvent", type="touchStart", touchPoints=[{"x": x, "y": y}])
            state = explorer_state(tools, "vx-explorer", H, W)
            tools.call("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])
            i, j, _, _ = _expected_cell(s, (x - left) / width, (y - top) / height)
            assert state["cell"] == f"{i},{j}", (fx, fy, state["cell"])
            np.testing.assert_array_equal(state["px"], s.images[i, j].transpose(1, 2, 0))
    finally:
        tools.close()
