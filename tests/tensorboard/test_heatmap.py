"""The heat-map renderer: geometry, colours at known pixels, glyphs, NaN cells."""

import numpy as np
import pytest

from ln_diagnostics.tensorboard.heatmap import (
    INK,
    NAN_COLOR,
    VIRIDIS,
    colorize,
    draw_text,
    render_heatmap,
    text_width,
    truncate_left,
)


def pixel(image, y, x):
    return tuple(int(v) for v in image[y, x])


def cell_centres(image, n_rows, n_cols):
    """Centres of the heat cells, found from the image itself (the viridis-coloured block)."""
    viridis = {tuple(c) for c in VIRIDIS} | {NAN_COLOR}
    mask = np.zeros(image.shape[:2], dtype=bool)
    for colour in viridis:
        mask |= (image == colour).all(axis=2)
    # The heat block is the widest coloured run; the colour bar is a narrow one to its right.
    rows = np.flatnonzero(mask.any(axis=1))
    y0, y1 = rows[0], rows[-1] + 1
    cols = np.flatnonzero(mask[(y0 + y1) // 2])
    breaks = np.flatnonzero(np.diff(cols) > 1)
    x0, x1 = cols[0], cols[breaks[0]] + 1 if breaks.size else cols[-1] + 1
    ch, cw = (y1 - y0) / n_rows, (x1 - x0) / n_cols
    return lambda r, c: (int(y0 + (r + 0.5) * ch), int(x0 + (c + 0.5) * cw))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (0.0, VIRIDIS[0]),
        (1.0, VIRIDIS[-1]),
        (-5.0, VIRIDIS[0]),  # clipped
        (7.0, VIRIDIS[-1]),
        (1 / 15, VIRIDIS[1]),
        (0.5 / 15, tuple(round((a + b) / 2) for a, b in zip(VIRIDIS[0], VIRIDIS[1], strict=True))),
        (float("nan"), NAN_COLOR),
        (float("inf"), NAN_COLOR),
    ],
)
def test_colorize_known_values(values, expected):
    out = colorize(np.array([[values]]), 0.0, 1.0)
    assert tuple(int(v) for v in out[0, 0]) == expected


def test_colorize_constant_range_uses_middle_colour():
    out = colorize(np.array([[3.0, 3.0]]), 3.0, 3.0)
    assert (out[0, 0] == out[0, 1]).all()
    assert tuple(out[0, 0]) not in (VIRIDIS[0], VIRIDIS[-1])


def test_known_matrix_maps_to_known_colours_at_known_pixels():
    matrix = np.array([[0.0, 1.0, 0.5], [1.0, np.nan, 0.0]])
    image = render_heatmap(matrix, row_labels=["net.0", "net.2"], steps=[0, 10, 20], title="t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    at = cell_centres(image, 2, 3)
    assert pixel(image, *at(0, 0)) == VIRIDIS[0]
    assert pixel(image, *at(0, 1)) == VIRIDIS[-1]
    assert pixel(image, *at(1, 0)) == VIRIDIS[-1]
    assert pixel(image, *at(1, 1)) == NAN_COLOR
    assert pixel(image, *at(1, 2)) == VIRIDIS[0]
    middle = tuple(int(v) for v in colorize(np.array([[0.5]]), 0.0, 1.0)[0, 0])
    assert pixel(image, *at(0, 2)) == middle


@pytest.mark.parametrize(("n_rows", "n_cols"), [(1, 1), (3, 7), (12, 200), (300, 50)])
def test_image_shape_grows_with_the_matrix(n_rows, n_cols):
    matrix = np.random.default_rng(0).normal(size=(n_rows, n_cols))
    labels = [f"encoder.layers.{i}.linear1" for i in range(n_rows)]
    image = render_heatmap(matrix, row_labels=labels, steps=range(0, 10 * n_cols, 10), title="x")
    height, width, channels = image.shape
    assert channels == 3
    assert 100 < height < 1100 and 200 < width < 1500


def test_layer_names_and_title_are_drawn_in_ink():
    image = render_heatmap(np.zeros((2, 2)), row_labels=["a", "b"], steps=[0, 1], title="T")
    ink = (image == INK).all(axis=2)
    assert ink.sum() > 50  # title, labels, axis and colour-bar numbers
    assert ink[:, :30].any()  # row labels at the left


def test_glyph_pixels():
    canvas = np.full((14, 40, 3), 255, dtype=np.uint8)
    draw_text(canvas, "1", 0, 0, scale=2)
    ink = (canvas == INK).all(axis=2)
    # "1": the stem is column 2 of the 5×7 glyph, all seven rows; at scale 2, columns 4-5.
    assert ink[:, 4:6].all()
    assert not ink[:, 0].any()
    assert text_width("ab", scale=2) == 22
    # Unknown characters are drawn (as "?"), clipping at the border does not raise.
    draw_text(canvas, "é€", 35, 10, scale=2)


def test_nan_cells_have_a_legend_only_when_present():
    full = render_heatmap(np.ones((2, 2)), row_labels=["a", "b"], steps=[0, 1])
    holes = render_heatmap(
        np.array([[1.0, np.nan], [1.0, 1.0]]), row_labels=["a", "b"], steps=[0, 1]
    )
    n_grey = lambda img: int((img == NAN_COLOR).all(axis=2).sum())  # noqa: E731
    assert n_grey(full) == 0
    assert n_grey(holes) > 0


def test_truncate_left_keeps_the_distinguishing_end():
    assert truncate_left("short", 10) == "short"
    assert truncate_left("model.encoder.layers.11.linear2", 16) == "..ers.11.linear2"
    assert len(truncate_left("x" * 100, 28)) == 28


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.zeros((0, 3)), "row_labels": [], "steps": [0, 1, 2]}, "non-empty 2-d"),
        ({"values": np.zeros((2, 3)), "row_labels": ["a"], "steps": [0, 1, 2]}, "expected (1, 3)"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_heatmap(**kwargs)


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
