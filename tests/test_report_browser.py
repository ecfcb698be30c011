"""The report page in a real headless browser: its text is there and every figure decodes.

Chromium opens a copy of report.html with a small probe script appended. On the
page's load event the script writes into the DOM the rendered text
(``innerText``) and, for each ``<img>``, its natural size (0 when the browser could
not decode it), the mean of its decoded pixels (drawn on a canvas) and its laid-out
box; ``--dump-dom`` prints the DOM after load.
A browser error page, a blank page, a missing or an undecodable figure all fail.

Skipped where Chromium is not installed; ``.ci/run`` installs it (Debian package
``chromium``) when it runs as root.
"""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.test_report import _render, inputs  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images, (img) => {
    const box = img.getBoundingClientRect();
    const mean = [0, 0, 0, 0];
    if (img.naturalWidth > 0) {  // the decoded pixels: mean of each RGBA channel
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < px.length; i++) mean[i % 4] += px[i];
      for (let c = 0; c < 4; c++) mean[c] /= px.length / 4;
    }
    return {id: img.id, inline: img.src.startsWith("data:image/png;base64,"), complete: img.complete,
            width: img.naturalWidth, height: img.naturalHeight, mean: mean,
            shown: box.width > 0 && box.height > 0};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({title: document.title, text: document.body.innerText, images: images});
  document.body.appendChild(out);
});
</script>
"""


def _skip_reason() -> str:
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    how = "run .ci/run, which installs it" if root else "as root: apt-get install -y chromium"
    return f"Chromium not on PATH (neither 'chromium' nor 'chromium-browser'); {how}"


def _probe(page, tmp_path) -> dict:
    """Load ``page`` in headless Chromium; return what the probe script wrote (fails without it)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the probe did not run (error page?):\n{proc.stdout[:1500]}\n{proc.stderr[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason=_skip_reason())
def test_report_renders_in_headless_chromium(inputs, tmp_path):  # noqa: F811
    report, out = _render(inputs)
    page = out / "probe.html"
    source = (out / "report.html").read_text()
    assert source.count("</body>") == 1
    page.write_text(source.replace("</body>", PROBE + "</body>"))
    result = _probe(page, tmp_path)

    assert result["title"] == "clipcache report"
    text = result["text"]
    # headings, table cells and captions of the page, as the browser laid them out
    for expected in ("clipcache report", "Comparison of heads", "accuracy at 4 shots", "Confusion matrices",
                     "t1: beta, 4 shots, 2 seeds", "CDUL (unsupervised multi-label)", "test mAP (classifier)",
                     "0.4242", "Intra-modal overlap", "Run parameters and cache identity", "sha256:abc",
                     "headline: accuracy"):
        assert expected in text, expected
    heads = {line.split("\t")[0] for line in text.splitlines()}
    assert {"alpha", "beta"} <= heads  # the comparison tables' rows

    # every figure is an <img> the browser decoded to the PNG's own size, and laid out
    figures = {f.name for f in report.figures()}
    assert figures == {p.stem for p in (out / "figures").glob("*.png")} and len(figures) >= 5
    images = {img["id"]: img for img in result["images"]}
    assert set(images) == {f"fig-{name}" for name in figures}
    for name in figures:
        img = images[f"fig-{name}"]
        with Image.open(out / "figures" / f"{name}.png") as png:
            size, mean = png.size, np.asarray(png.convert("RGBA"), dtype=float).mean(axis=(0, 1))
        assert img["inline"] and img["complete"], (name, img)
        assert (img["width"], img["height"]) == size and size[0] > 0, (name, img, size)
        # all of it decoded (a truncated PNG still reports its size): the pixels are the file's
        np.testing.assert_allclose(img["mean"], mean, atol=1.0, err_msg=name)
        assert img["shown"], name
