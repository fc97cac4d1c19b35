from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crnet.data.pictures import (
    PREDICTION_COLOR,
    PREDICTION_OUTLINE,
    SUPPORT_HATCH,
    TRUTH_COLOR,
    TRUTH_OUTLINE,
    grid,
    hatch,
    legend_swatch,
    outline,
    overlay,
    save_png,
    with_legend,
)


def test_overlay_tints_only_the_mask() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    mask[0, 0] = 255
    out = overlay(image, mask, TRUTH_COLOR)
    assert tuple(out[10, 10]) != (0, 0, 0)
    assert tuple(out[5, 5]) == TRUTH_COLOR  # boundary drawn in full colour
    assert tuple(out[19, 19]) == (0, 0, 0)
    assert tuple(out[0, 0]) == (64, 64, 64)  # ignore shown grey


def test_grid_and_png_round_trip(tmp_path) -> None:
    tiles = [[np.full((30, 40, 3), value, np.uint8) for value in (0, 128)]] * 3
    picture = grid(tiles, titles=["a", "b"], tile=50, gap=2)
    assert picture.shape == (22 + 3 * 50 + 4 * 2, 2 * 50 + 3 * 2, 3)
    path = save_png(tmp_path / "grid.png", picture)
    assert np.array_equal(np.asarray(Image.open(path)), picture)


BACKGROUNDS = {"red": (255, 0, 0), "yellow": (255, 255, 0), "magenta": (255, 0, 255),
               "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
               "green": (0, 200, 70), "blue": (0, 110, 255)}


def square(size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 8:32] = 1
    return mask


def edge_stays_visible(drawn: np.ndarray, background: tuple[int, int, int],
                       mask: np.ndarray, contrast: float = 150.0) -> bool:
    """Whether every pixel on the mask's edge has, within 2 pixels, a pixel at least
    ``contrast`` (RGB distance) away from the background."""
    foreground = mask > 0
    inner = foreground.copy()
    inner[1:-1, 1:-1] = (foreground[1:-1, 1:-1] & foreground[:-2, 1:-1] & foreground[2:, 1:-1]
                         & foreground[1:-1, :-2] & foreground[1:-1, 2:])
    distance = np.linalg.norm(drawn.astype(float) - np.asarray(background, float), axis=2)
    visible = distance >= contrast
    for row, column in zip(*np.nonzero(foreground & ~inner), strict=True):
        if not visible[max(0, row - 2):row + 3, max(0, column - 2):column + 3].any():
            return False
    return True


@pytest.mark.parametrize("background", sorted(BACKGROUNDS))
def test_prediction_outline_is_visible_on_any_background(background: str) -> None:
    color = BACKGROUNDS[background]
    image = np.full((40, 40, 3), color, np.uint8)
    for outline_color in (PREDICTION_OUTLINE, TRUTH_OUTLINE):
        drawn = outline(image, square(), outline_color)
        assert edge_stays_visible(drawn, color, square())


def test_the_old_tint_vanishes_on_a_red_background() -> None:
    """What the outline replaces: a red tint with a red edge on a red object."""
    image = np.full((40, 40, 3), BACKGROUNDS["red"], np.uint8)
    assert not edge_stays_visible(overlay(image, square(), PREDICTION_COLOR),
                                  BACKGROUNDS["red"], square())


@pytest.mark.parametrize("background", ["yellow", "red", "white", "black"])
def test_support_hatching_is_visible_and_not_yellow(background: str) -> None:
    color = BACKGROUNDS[background]
    image = np.full((40, 40, 3), color, np.uint8)
    drawn = hatch(image, square())
    assert edge_stays_visible(drawn, color, square())
    inside = drawn[14:26, 12:28].reshape(-1, 3).astype(float)
    assert (np.linalg.norm(inside - color, axis=1) >= 150).mean() > 0.3  # the hatching
    assert np.linalg.norm(np.subtract(SUPPORT_HATCH, (255, 210, 0))) > 250  # far from yellow


def test_palette_colours_differ() -> None:
    colours = [PREDICTION_OUTLINE, TRUTH_OUTLINE, SUPPORT_HATCH]
    for index, first in enumerate(colours):
        for second in colours[index + 1:]:
            assert np.linalg.norm(np.subtract(first, second)) > 150


def test_legend_shows_each_swatch_under_the_picture() -> None:
    picture = np.zeros((30, 200, 3), np.uint8)
    entries = [("support", "hatch", SUPPORT_HATCH), ("prediction", "outline",
                                                      PREDICTION_OUTLINE)]
    framed = with_legend(picture, entries)
    assert np.array_equal(framed[:30, :200], picture)
    strip = framed[30:]
    for _, style, color in entries:
        swatch = legend_swatch(style, color)
        assert (strip.reshape(-1, 3) == color).all(axis=1).any()
        assert any(np.array_equal(strip[4:4 + swatch.shape[0], x:x + swatch.shape[1]], swatch)
                   for x in range(strip.shape[1] - swatch.shape[1]))
    assert (strip != 255).any(axis=2)[:, 100:].any()  # a label beside the second swatch


def test_a_legend_wider_than_the_picture_widens_it() -> None:
    framed = with_legend(np.zeros((10, 20, 3), np.uint8), [("a long label", "outline",
                                                              PREDICTION_OUTLINE)])
    assert framed.shape[1] > 20 and (framed[:10, 20:] == 255).all()
    with pytest.raises(ValueError, match="legend style"):
        legend_swatch("dotted", PREDICTION_OUTLINE)
