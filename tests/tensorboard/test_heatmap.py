"""The matplotlib pictures: fixed colour scales (same value, same colour in any run), log colour
scale, grey for missing values, argument checks, and no matplotlib import before the first one."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize, to_rgb

from ln_diagnostics.tensorboard.heatmap import (
    ACTIVATION_STD_SCALE,
    BACKPROP_SCALE,
    NAN_COLOR,
    WIDTH_PX,
    ProfilePanel,
    render_heatmap,
    render_profiles,
)


def expected_rgb(scale, value):
    norm = LogNorm(scale.vmin, scale.vmax) if scale.log else Normalize(scale.vmin, scale.vmax)
    return tuple(round(255 * c) for c in colormaps[scale.cmap](norm(value))[:3])


def area(image, rgb):
    """Pixels inside a 3×3 block of this colour (so not the anti-aliased edges of text), allowing
    for the 8-bit rounding of the colour map."""
    match = (np.abs(image.astype(int) - np.array(rgb)) <= 1).all(axis=2)
    inner = match[1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= match[1 + dy : match.shape[0] - 1 + dy, 1 + dx : match.shape[1] - 1 + dx]
    return int(inner.sum())


def render(matrix, scale=BACKPROP_SCALE):
    rows = [f"net.{k} Tanh" for k in range(len(matrix))]
    return render_heatmap(
        matrix, row_labels=rows, steps=range(0, 10 * len(matrix[0]), 10), scale=scale
    )


def test_the_same_value_has_the_same_colour_whatever_else_the_run_holds():
    # one run spans four decades, the other half a decade: a per-image range would give -0.5 two
    # different colours
    wide = render([[-4.0, -0.5], [-2.0, 0.0]])
    narrow = render([[-0.5, -0.5], [0.0, 0.0]])
    for value in (-0.5, 0.0):
        colour = expected_rgb(BACKPROP_SCALE, value)
        assert area(wide, colour) > 400 and area(narrow, colour) > 400
    assert area(narrow, expected_rgb(BACKPROP_SCALE, -4.0)) == 0


def test_values_beyond_the_fixed_range_take_the_end_colours():
    image = render([[-9.0, 9.0]])
    assert area(image, expected_rgb(BACKPROP_SCALE, BACKPROP_SCALE.vmin)) > 400
    assert area(image, expected_rgb(BACKPROP_SCALE, BACKPROP_SCALE.vmax)) > 400


def test_activation_std_is_coloured_on_a_log_scale():
    image = render([[1e-2, 1.0]], scale=ACTIVATION_STD_SCALE)
    # on a log scale from 1e-3 to 10, 1e-2 sits a quarter of the way up, 1 three quarters
    cmap = colormaps[ACTIVATION_STD_SCALE.cmap]
    for value, position in ((1e-2, 0.25), (1.0, 0.75)):
        assert expected_rgb(ACTIVATION_STD_SCALE, value) == tuple(
            round(255 * c) for c in cmap(position)[:3]
        )
        assert area(image, expected_rgb(ACTIVATION_STD_SCALE, value)) > 400


def test_cells_without_a_value_are_grey_only_when_present():
    grey = tuple(round(255 * c) for c in to_rgb(NAN_COLOR))
    assert area(render([[0.0, 1.0]]), grey) == 0
    assert area(render([[0.0, np.nan]]), grey) > 400
    # a log scale has no place for zero or negative values: grey, not the lowest colour
    assert area(render([[0.0, 1.0]], scale=ACTIVATION_STD_SCALE), grey) > 400


def test_pictures_fit_an_images_tab_card():
    many = render(np.zeros((48, 150)))
    assert many.shape[1] == WIDTH_PX and many.dtype == np.uint8
    assert many.shape[0] > render(np.zeros((4, 150))).shape[0]  # rows keep a legible height
    panel = ProfilePanel("log10 x", [("step 0", [-9.0, -1.0, 0.0])], (-3.0, 1.0), -1.0)
    profile = render_profiles([panel, panel], layer_labels=["a", "b", "c"])
    assert profile.shape[1] == WIDTH_PX and profile.shape[2] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.zeros((0, 3)), "row_labels": [], "steps": [0, 1, 2]}, "non-empty 2-d"),
        ({"values": np.zeros((2, 3)), "row_labels": ["a"], "steps": [0, 1, 2]}, "expected (1, 3)"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_heatmap(**kwargs, scale=BACKPROP_SCALE)


def test_profile_lines_must_have_one_value_per_layer():
    panel = ProfilePanel("log10 x", [("step 0", [1.0, 2.0])], (-3.0, 1.0))
    with pytest.raises(ValueError, match="panel 'log10 x', line 'step 0': 2 values for 3 layers"):
        render_profiles([panel], layer_labels=["a", "b", "c"])


def test_matplotlib_is_imported_on_the_first_drawing_only():
    code = (
        "import sys\n"
        "from ln_diagnostics.tensorboard import dashboard, heatmap\n"
        "before = 'matplotlib' in sys.modules\n"
        "scale = heatmap.BACKPROP_SCALE\n"
        "heatmap.render_heatmap([[0.0]], row_labels=['a'], steps=[0], scale=scale)\n"
        "print(before, 'matplotlib.pyplot' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]  # and never pyplot (a GUI backend)


def test_image_summary_is_a_lossless_png_of_the_array():
    import io

    from PIL import Image

    from ln_diagnostics.tensorboard.writer import image_summary

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    value = image_summary("heatmaps/x", image).value[0]
    assert value.tag == "heatmaps/x"
    assert (value.image.height, value.image.width, value.image.colorspace) == (7, 11, 3)
    decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_summary("heatmaps/x", image.astype(np.float32))
