"""A list of images under one key (``wandb.log({"samples": [wandb.Image(a), ...]})``) drawn on the run page as a
gallery at the slider's step, in real headless Chromium against a real worker and gateway: the thumbnails are the
logged blobs (their bytes hash to the history's sha256 values, their pixels are the logged colours), the captions
are the logged ones, and moving the slider shows another step's images. The strings table keeps only the other
values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.browser_stack import Stack

import ingest

pytestmark = pytest.mark.browser

STEPS = 4
N = 3


def colour(step: int, j: int) -> tuple[int, int, int]:
    return (40 * step + 10, 80 * j + 20, 200 - 30 * step)


# Each shown thumbnail: its sha attribute, the SHA-256 of the bytes its src serves, its centre pixel, its caption.
SHOWN = """async (key) => {
  const figs = [...document.querySelectorAll(`.panel[data-key="${key}"] .gallery figure`)];
  return Promise.all(figs.map(async (f) => {
    const img = f.querySelector("img");
    const bytes = await (await fetch(img.src)).arrayBuffer();
    const digest = [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = [...ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data].slice(0, 3);
    return { sha: img.dataset.sha, digest, px, caption: f.querySelector("figcaption").textContent,
             w: img.naturalWidth };
  }));
}"""


def shown_at(page: Any, step: int) -> list[dict[str, Any]]:
    page.wait_for_function(
        "([s, n]) => { const p = document.querySelector('.panel[data-key=\"samples\"]');"
        " const imgs = p ? [...p.querySelectorAll('.gallery img')] : [];"
        " return p.dataset.step === String(s) && p.dataset.shownStep === String(s) && imgs.length === n"
        " && imgs.every((i) => i.complete && i.naturalWidth > 0)"
        " && p.dataset.shas === imgs.map((i) => i.dataset.sha).join(','); }",
        arg=[step, N],
    )
    out: list[dict[str, Any]] = page.evaluate(SHOWN, "samples")
    return out


def test_image_list_gallery(stack: Stack, page: Any, tmp_path: Path) -> None:
    run = stack.init("gal", "g1")
    for i in range(STEPS):
        run.log(
            {
                "samples": [
                    ingest.Image(np.full((8, 12, 3), colour(i, j), dtype=np.uint8), caption=f"s{i}-{j}")
                    for j in range(N)
                ],
                "phase": f"p{i}",
            },
            step=i,
        )
    run.finish()
    stack.wait("gal/g1", lambda v: v.state == "finished", what="finished")
    hist = stack.get_json("projects/gal/runs/g1/history", keys="samples", samples="all")
    by_step = {r["_step"]: [im["sha256"] for im in r["samples"]] for r in hist}
    assert sorted(by_step) == list(range(STEPS)) and all(len(v) == N for v in by_step.values())

    page.goto(f"{stack.url}#/p/gal/r/g1")
    page.wait_for_selector('.panel[data-key="samples"][data-kind="images"]')
    panel = page.locator('.panel[data-key="samples"]')
    panel.scroll_into_view_if_needed()

    # The summary names the list rather than printing its JSON.
    assert page.locator('#summary tr[data-summary-key="samples"] td').inner_text() == f"{N} images"

    # The latest step first, as a single image's panel does.
    last = shown_at(page, STEPS - 1)
    assert [s["sha"] for s in last] == [s["digest"] for s in last] == by_step[STEPS - 1]
    assert [s["px"] for s in last] == [list(colour(STEPS - 1, j)) for j in range(N)]
    assert [s["caption"] for s in last] == [f"s{STEPS - 1}-{j}" for j in range(N)]
    assert all(s["w"] == 12 for s in last)
    page.screenshot(path=tmp_path / "gallery.png")

    # The slider moves the whole gallery to another step.
    panel.locator("input.step-slider").fill("1")
    one = shown_at(page, 1)
    assert [s["sha"] for s in one] == [s["digest"] for s in one] == by_step[1] != by_step[STEPS - 1]
    assert [s["px"] for s in one] == [list(colour(1, j)) for j in range(N)]
    assert [s["caption"] for s in one] == [f"s1-{j}" for j in range(N)]

    # The strings table keeps "phase" and no longer shows the list as JSON.
    table = page.locator('.panel[data-kind="table"]')
    table.scroll_into_view_if_needed()
    page.wait_for_selector('.panel[data-kind="table"] th:text-is("phase")')
    heads = table.locator("th").all_inner_texts()
    assert "phase" in heads and "samples" not in heads
    assert page.locator('.panel[data-key="samples"]').count() == 1
