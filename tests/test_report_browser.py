"""The report in a real browser: headless Chromium decodes every embedded image and paints a full page.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``). Without it the test is skipped,
except under CI (``$CI`` set), where a missing browser is a failure: CI must install it.
Set ``VAELAB_REPORT_SCREENSHOT=path.png`` to keep the screenshot for a look.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_report import CASES, make_run
from vaelab.report import build_report

pytestmark = pytest.mark.browser

_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests may run as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Reports, after the page has loaded, whether each report image decoded, plus a control image that is
# deliberately broken: the check must see that one fail, or it proves nothing.
_PROBE = """
<img id="probe-control" alt="control" src="data:image/png;base64,iVBORw0KGgoAAAAAbroken">
<script>
window.addEventListener("load", () => {
  const ok = i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0;
  const imgs = [...document.images].filter(i => i.id !== "probe-control");
  document.body.setAttribute("data-imgcheck", JSON.stringify({
    images: imgs.map(ok),
    sizes: imgs.map(i => [i.naturalWidth, i.naturalHeight]),
    control: ok(document.getElementById("probe-control")),
  }));
});
</script>
"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium not found: CI must install Debian's chromium package (apt-get install -y chromium)"
            )
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium); CI runs this test")
    return path


def _run(args: list[str], profile: Path) -> str:
    proc = subprocess.run(
        [_chromium(), *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A report over RGB, non-square images with every figure present."""
    _chromium()  # skip (or fail under CI) before doing any work
    root = tmp_path_factory.mktemp("runs")
    case = "rgb-32x24-pca"
    run, expected = make_run(root, case, *CASES[case])
    return build_report(run), expected


def test_every_image_in_the_report_decodes_in_chromium(report: tuple[Path, int], tmp_path: Path) -> None:
    page, expected = report
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")

    dom = _run(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp_path / "profile")
    found = re.search(r'data-imgcheck="([^"]*)"', dom)
    assert found, f"the probe did not run; dumped DOM starts: {dom[:500]!r}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["control"] is False, "the probe reported a broken image as decoded"
    assert len(check["images"]) == expected
    broken = [i for i, ok in enumerate(check["images"]) if not ok]
    assert not broken, f"images {broken} of {expected} did not decode"
    assert all(w >= 50 and h >= 50 for w, h in check["sizes"]), check["sizes"]


def test_the_report_paints_a_full_page(report: tuple[Path, int], tmp_path: Path) -> None:
    from matplotlib.image import imread

    page, _ = report
    shot = tmp_path / "shot.png"
    _run(["--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()], tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 50_000
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    ink = (pixels.min(axis=2) < 0.9).mean()  # fraction of pixels that are not (near) white
    assert ink > 0.05, f"only {ink:.1%} of the page is painted"
    assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 1000  # figures, not flat colour
    if keep := os.environ.get("VAELAB_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, keep)
