"""The dashboards as a newcomer sees them: the demo's two runs (16 tanh layers without and with
LayerNorm, a few steps) served by a real TensorBoard on loopback and opened in headless Chromium.

Checked from the page itself (text in open shadow roots, element positions, loaded images), not
from pixels. Environment variables:

* ``LN_DIAGNOSTICS_DEMO_LOGDIR``: serve these logs (e.g. ``runs/demo`` after ``make demo``)
  instead of training the short runs;
* ``LN_DIAGNOSTICS_SCREENSHOTS``: write the screenshots into this directory (the README's come
  from ``LN_DIAGNOSTICS_DEMO_LOGDIR=runs/demo LN_DIAGNOSTICS_SCREENSHOTS=docs``).
"""

import argparse
import importlib.util
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ln_diagnostics.tags import SUMMARY_TEXT_TAG, heatmap_tag
from ln_diagnostics.tensorboard.layout import DEPTH_TITLE, HEALTH_TITLE

ROOT = Path(__file__).resolve().parents[2]
RUNS = ("no_norm", "layernorm")
DEPTH_CHART = "backprop depth: log10(first / last layer of the hidden stack); flat line = step 0"
HEALTH_CHARTS = (
    DEPTH_CHART,
    "log10 total gradient norm",
    "log10 total update ratio (healthy ≈ -3)",
    "non-finite values",
)


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    given = os.environ.get("LN_DIAGNOSTICS_DEMO_LOGDIR")
    if given:
        return Path(given)
    root = tmp_path_factory.mktemp("demo")
    demo = load_demo()
    args = argparse.Namespace(steps=21, logdir=root)  # logging steps 0, 10 and 20
    for name in RUNS:
        demo.train(name, name == "layernorm", args)
    return root


@pytest.fixture(scope="module")
def tensorboard_url(logdir, serve_tensorboard, served_image_step):
    """The server, once it has loaded the whole logs: the fit-end heat maps are written last."""
    tag = heatmap_tag("backprop_log10_norm")
    last = {}
    for run in RUNS:
        acc = EventAccumulator(str(logdir / run), size_guidance={"images": 0})
        acc.Reload()
        last[run] = acc.Images(tag)[-1].step

    def loaded(base):
        return all(served_image_step(base, run, tag) == step for run, step in last.items())

    with serve_tensorboard(logdir, len(RUNS), ready=loaded) as base:
        yield base


def screenshot(browser, name):
    target = os.environ.get("LN_DIAGNOSTICS_SCREENSHOTS")
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"{name}.png").write_bytes(png)


def first_position(page, text):
    """Top of the first element whose own text is ``text``, or None."""
    return next((top for value, top, _ in page["titles"] if value == text), None)


def test_custom_scalars_first_screen_shows_the_vanishing_gradient(chromium, tensorboard_url):
    chromium.open(f"{tensorboard_url}/#custom_scalars")
    # the charts' legends list their series once the data is there: wait for each run's lines
    series = [
        f"{tag} ({run})"
        for tag in ("health/backprop_depth_log10", "health/backprop_depth_log10_step0")
        for run in RUNS
    ]
    page = chromium.wait_for(
        lambda p: (
            all(t in p["text"] for t in (*HEALTH_CHARTS, DEPTH_TITLE, *series))
            and "Matches (0)" not in p["text"]
        )
    )
    assert all(s in page["text"] for s in series), "the depth chart has no lines"
    assert "Matches (0)" not in page["text"], "a chart matched no series"
    for title in (HEALTH_TITLE, *HEALTH_CHARTS):
        top = first_position(page, title)
        assert top is not None, f"{title!r} is not on the page"
        assert 0 <= top < page["viewport"], f"{title!r} is below the first screen ({top})"
    assert {"no_norm", "layernorm"} <= set(page["text"])  # the run selector lists both
    screenshot(chromium, "dashboard_custom_scalars")
    # what the depth chart draws, as the page asks for it: the step-0 line of each run
    depth = {}
    for run in RUNS:
        query = urllib.parse.urlencode({"run": run, "tag": "^health/backprop_depth_log10_step0$"})
        url = f"{tensorboard_url}/data/plugin/custom_scalars/scalars?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            events = json.loads(response.read())["tag_to_events"]
        _, step, value = events["health/backprop_depth_log10_step0"][0]
        depth[run] = (step, value)
    assert depth["no_norm"][0] == 0 and depth["no_norm"][1] < -3.0  # 1000× smaller at the input
    assert abs(depth["layernorm"][1]) < 1.0  # no vanishing with LayerNorm


def test_images_show_the_backprop_pictures_of_both_runs(chromium, tensorboard_url):
    # filtered as the README's screenshot is: the heat maps and profiles of the gradient, on a
    # screen tall enough for both rows
    chromium.resize(1400, 1700)
    chromium.open(f"{tensorboard_url}/#images&tagFilter=backprop%7Cdepth")
    tags = [heatmap_tag(n) for n in ("backprop_log10_norm", "depth_profile")]

    def pictures(page):
        return [i for i in page["images"] if "individualImage" in i["src"] and i["width"]]

    def cards(page):  # a card a run and picture
        return all(page["text"].count(t) >= len(RUNS) for t in tags)

    page = chromium.wait_for(
        lambda p: "Tags matching" in p["text"] and cards(p) and len(pictures(p)) >= len(RUNS)
    )
    assert cards(page), page["text"]
    shown = pictures(page)
    assert len(shown) >= len(RUNS), "the heat maps did not load"
    assert {i["width"] for i in shown} == {360}  # a card's width: shown at full size
    assert any(0 <= i["top"] < page["viewport"] for i in shown)  # on the first screen
    screenshot(chromium, "dashboard_images")
    chromium.resize(1400, 1000)


#: the heading of each run's summary: 16 Linear, 16 Tanh and the head; LayerNorm adds 15
SUMMARY_HEADINGS = ("Layer diagnostics: 33 layers watched", "Layer diagnostics: 48 layers watched")


def test_text_shows_the_summary_with_the_options(chromium, tensorboard_url):
    chromium.open(f"{tensorboard_url}/#text")

    def headings(page):  # each run's card loads on its own: wait for both
        return [h for h in SUMMARY_HEADINGS if any(t.startswith(h) for t in page["text"])]

    page = chromium.wait_for(lambda p: len(headings(p)) == len(RUNS))
    assert headings(page) == list(SUMMARY_HEADINGS), page["text"]
    assert page["text"].count("Options") == len(RUNS) and "every_n_steps" in page["text"]
    assert f"{SUMMARY_TEXT_TAG}/text_summary" in page["text"]
    if "diagnosis/text_summary" in page["text"]:  # the diagnosis, once written, comes first
        assert page["text"].index("diagnosis/text_summary") < page["text"].index(
            f"{SUMMARY_TEXT_TAG}/text_summary"
        )
    screenshot(chromium, "dashboard_text")
