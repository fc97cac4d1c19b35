"""synthetic-5i: a procedural few-shot segmentation benchmark mirroring PASCAL-5i.

20 object classes in 4 folds of 5 (fold i: novel classes 5i+1..5i+5, base = the other 15).
A class is a distribution, not a template: an outline family (ellipse, star, tile,
crescent, ring, triangle, cross, heart, blob, hexagon) combined with a texture family
(stripes, checker, dots, mottled noise, gradient) and a colour statistic, with
per-instance scale, aspect, rotation, colour and texture jitter. Every outline and every
colour is shared by two or more classes, so only the combination identifies a class and a
model has to look at its support.

Images (``image_size`` square, RGB uint8) hold 1-3 target objects and, with probability
0.7 in queries and 0.3 in supports, 1-2 distractor objects of other classes, over
cluttered backgrounds (tinted scikit-image texture photos, colour photos, smooth colour
fields, flat-colour clutter shapes). Later objects occlude earlier ones. Masks: 1 = the
target class, 0 = everything else, 255 = a 3-px ignore band at every object boundary.

Determinism: every image is drawn from ``np.random.SeedSequence`` of the int tuple
``(SALT, split, fold, seed, role, index, ...)``; nothing else is random. Train and test
images cannot collide: their seed tuples differ in the split entry (independent streams),
and structurally every test image contains a novel-class target while train images only
ever contain base classes (train distractors come from the other base classes; test
distractors from any of the other 19 classes).

Episode ``index`` uses class ``classes[index % 5]`` (test) or ``classes[index % 15]``
(train), so classes are balanced; supports are drawn per (index, j), so the K-shot
episode extends the 1-shot one (same class, query and first support).

``crnet synthetic --bench`` (or ``python -m crnet.data.synthetic --bench``) prints
images/s; ``crnet synthetic --preview out.png`` writes a grid to look at.
"""

from __future__ import annotations

import colorsys
import functools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crnet.data.episodes import (
    IGNORE,
    NUM_CLASSES,
    DatasetError,
    Episode,
    check_fold,
    check_shots,
    check_split,
    episode_rng,
    fold_classes,
)

SALT = 0x5F5E_1001  # namespaces synthetic-5i seed tuples
SPLIT_CODE = {"train": 1, "test": 2}
ROLE_CLASS, ROLE_QUERY, ROLE_SUPPORT, ROLE_SAMPLE = 1, 2, 3, 4
QUERY_DISTRACTOR_PROB = 0.7
SUPPORT_DISTRACTOR_PROB = 0.3
MIN_TARGET_FRACTION = 0.02  # visible target pixels (label 1) per image, after occlusion

CLASS_NAMES: tuple[str, ...] = (
    "ember-disc", "frost-star", "moss-tile", "sun-crescent", "plum-ring",
    "rust-triangle", "aqua-cross", "rose-heart", "mud-blob", "jade-hexagon",
    "cobalt-disc", "ember-star", "lime-tile", "ink-crescent", "gold-ring",
    "violet-triangle", "coral-cross", "mint-heart", "slate-blob", "cherry-hexagon",
)


@dataclass(frozen=True)
class ClassStyle:
    """Generative description of one class: outline, texture and colour statistics."""

    shape: str              # ellipse star tile crescent ring triangle cross heart blob hexagon
    texture: str            # stripes checker dots noise gradient
    hue: float              # primary hue in degrees
    saturation: tuple[float, float]
    value: tuple[float, float]
    secondary: str | float  # "dark", "light" or a hue in degrees
    period: tuple[float, float] = (9.0, 15.0)  # texture period in pixels at 321x321
    star_points: int = 5


CLASS_STYLES: tuple[ClassStyle, ...] = (
    ClassStyle("ellipse", "stripes", 0, (0.75, 0.95), (0.75, 0.95), "light"),
    ClassStyle("star", "dots", 220, (0.65, 0.9), (0.7, 0.95), "light", (10, 14), 5),
    ClassStyle("tile", "checker", 120, (0.6, 0.85), (0.55, 0.8), "dark", (12, 18)),
    ClassStyle("crescent", "gradient", 55, (0.75, 0.95), (0.85, 1.0), 25.0),
    ClassStyle("ring", "noise", 280, (0.5, 0.8), (0.55, 0.85), "dark"),
    ClassStyle("triangle", "checker", 25, (0.75, 0.95), (0.75, 0.95), "dark", (10, 14)),
    ClassStyle("cross", "stripes", 185, (0.6, 0.9), (0.7, 0.95), "dark", (7, 10)),
    ClassStyle("heart", "gradient", 330, (0.45, 0.7), (0.85, 1.0), "light"),
    ClassStyle("blob", "dots", 30, (0.45, 0.65), (0.35, 0.55), "light", (8, 11)),
    ClassStyle("hexagon", "noise", 165, (0.6, 0.85), (0.5, 0.8), "light"),
    ClassStyle("ellipse", "checker", 220, (0.65, 0.9), (0.5, 0.8), "dark", (9, 13)),
    ClassStyle("star", "stripes", 0, (0.75, 0.95), (0.6, 0.85), "dark", (7, 10), 7),
    ClassStyle("tile", "dots", 90, (0.7, 0.95), (0.7, 0.95), "dark", (12, 16)),
    ClassStyle("crescent", "stripes", 235, (0.6, 0.85), (0.35, 0.55), "light", (10, 14)),
    ClassStyle("ring", "gradient", 50, (0.75, 0.95), (0.8, 1.0), "dark"),
    ClassStyle("triangle", "noise", 280, (0.5, 0.8), (0.55, 0.85), "light"),
    ClassStyle("cross", "dots", 10, (0.5, 0.7), (0.85, 1.0), "dark", (9, 12)),
    ClassStyle("heart", "checker", 150, (0.45, 0.7), (0.75, 0.95), "light", (9, 13)),
    ClassStyle("blob", "stripes", 210, (0.05, 0.15), (0.45, 0.7), "dark", (12, 16)),
    ClassStyle("hexagon", "dots", 350, (0.75, 0.95), (0.6, 0.85), "light", (9, 12)),
)

# Bounding radius (in units of R) and area (in R^2) of each outline, measured once on a
# fine grid with the mid-range instance parameters (see _shape_inside).
_EXTENT = {"ellipse": 1.0, "star": 1.0, "tile": 1.19, "crescent": 1.0, "ring": 1.0,
           "triangle": 1.0, "cross": 1.07, "heart": 1.45, "blob": 1.45, "hexagon": 1.0}
_UNIT_AREA = {"ellipse": 3.14, "star": 2.02, "tile": 3.7, "crescent": 1.32, "ring": 2.3,
              "triangle": 1.3, "cross": 2.23, "heart": 4.06, "blob": 3.21, "hexagon": 2.6}


@dataclass(frozen=True)
class Scene:
    """One generated image with its class-id label map (0 = background, 255 = ignore)."""

    image: np.ndarray
    label: np.ndarray
    target: int
    distractors: tuple[int, ...]  # classes of the distractor objects visible in the image

    @property
    def mask(self) -> np.ndarray:
        """0/1/255 mask of the target class."""
        mask = (self.label == self.target).astype(np.uint8)
        mask[self.label == IGNORE] = IGNORE
        return mask

    @property
    def has_distractor(self) -> bool:
        """Whether an object of another class is visible."""
        return bool(self.distractors)


@dataclass(frozen=True)
class _Assets:
    gray: tuple[np.ndarray, ...]    # grayscale texture photos (HxW uint8)
    color: tuple[np.ndarray, ...]   # colour photos (HxWx3 uint8)
    noise: np.ndarray               # 512x512 float32 smooth value noise in [0, 1]


def _bilinear_matrix(size: int, cells: int) -> np.ndarray:
    """(size x cells) matrix that linearly interpolates a cells-vector to size samples."""
    pos = np.linspace(0, cells - 1, size)
    low = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = pos - low
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


@functools.lru_cache(maxsize=1)
def _assets() -> _Assets:
    """Texture photos shipped in the scikit-image wheel and a fixed noise tile (read-only)."""
    from skimage import data

    gray = tuple(getattr(data, name)() for name in ("brick", "grass", "gravel", "camera", "moon"))
    color = tuple(getattr(data, name)() for name in ("astronaut", "coffee", "rocket",
                                                     "immunohistochemistry"))
    rng = np.random.default_rng(20200614)
    noise = np.zeros((512, 512), np.float32)
    for cells, weight in ((65, 0.5), (129, 0.35), (257, 0.15)):
        up = _bilinear_matrix(512, cells)
        noise += weight * (up @ rng.random((cells, cells), dtype=np.float32) @ up.T)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    arrays = (*gray, *color, noise)
    for array in arrays:
        array.setflags(write=False)
    return _Assets(gray, color, noise)


def _crop(rng: np.random.Generator, array: np.ndarray, size: int) -> np.ndarray:
    """A random size x size crop (reflect-padded if needed), randomly flipped/transposed."""
    if array.shape[0] < size or array.shape[1] < size:
        pad = [(0, max(0, size - array.shape[0])), (0, max(0, size - array.shape[1]))]
        array = np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode="reflect")
    top = int(rng.integers(0, array.shape[0] - size + 1))
    left = int(rng.integers(0, array.shape[1] - size + 1))
    crop = array[top:top + size, left:left + size]
    flips = rng.integers(0, 2, 3)
    if flips[0]:
        crop = crop[::-1]
    if flips[1]:
        crop = crop[:, ::-1]
    if flips[2]:
        crop = crop.swapaxes(0, 1)
    return crop


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue / 360.0) % 1.0, saturation, value),
                    np.float32) * 255


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 0.8), rng.uniform(0.15, 0.95))


class _Renderer:
    """Vectorised scene rendering for one image size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.coords = np.arange(size, dtype=np.float32)
        self.scale = size / 321.0
        quarter = -(-size // 4)
        self.up = {cells: _bilinear_matrix(quarter, cells) for cells in (2, 3, 4, 5, 6)}
        self.assets = _assets()

    # ---------------------------------------------------------------- background
    def background(self, rng: np.random.Generator) -> np.ndarray:
        size, assets = self.size, self.assets
        kind = rng.choice(3, p=(0.45, 0.25, 0.3))
        if kind == 0:  # grayscale texture photo through a random two/three-colour ramp
            texture = _crop(rng, assets.gray[rng.integers(len(assets.gray))], size)
            stops = np.stack([_random_color(rng) for _ in range(3)])
            ramp = np.linspace(0, 2, 256, dtype=np.float32)[:, None]
            lut = np.where(ramp < 1, stops[0] + (stops[1] - stops[0]) * ramp,
                           stops[1] + (stops[2] - stops[1]) * (ramp - 1))
            image = lut.astype(np.uint8)[texture]
        elif kind == 1:  # colour photo, channels permuted
            photo = _crop(rng, assets.color[rng.integers(len(assets.color))], size)
            image = np.ascontiguousarray(photo[..., rng.permutation(3)])
        else:  # smooth colour field with grain
            # bilinear upsampling of a cells x cells grid, computed at 1/4 resolution with
            # broadcasting (no BLAS: threaded matmul stalls under CPU contention)
            cells = int(rng.integers(2, 7))
            up = self.up[cells][:, :, None, None]
            grid = rng.random((cells, cells, 3), dtype=np.float32) * 230 + 10
            rows = (up * grid[None]).sum(axis=1)                         # (n, cells, 3)
            field = (rows[:, None] * up[None, :, :, 0]).sum(axis=2)      # (n, n, 3)
            field = field.repeat(4, axis=0).repeat(4, axis=1)[:size, :size]
            grain = _crop(rng, assets.noise, size)[..., None] * 60 - 30
            image = np.clip(field + grain, 0, 255).astype(np.uint8)
        image = np.array(image, copy=True)
        for _ in range(int(rng.integers(0, 5))):  # flat-colour clutter shapes
            self._clutter(rng, image)
        return image

    def _clutter(self, rng: np.random.Generator, image: np.ndarray) -> None:
        shape = ("ellipse", "tile", "triangle", "hexagon")[int(rng.integers(4))]
        radius = rng.uniform(12, 60) * self.scale
        inside, (y0, x0) = self._outline(rng, shape, radius, 5)
        color = _random_color(rng).astype(np.uint8)
        image[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]][inside] = color

    # ---------------------------------------------------------------- objects
    def _outline(self, rng: np.random.Generator, shape: str, radius: float,
                 star_points: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Boolean inside-mask of an instance in its (clipped) bounding box, and the box origin."""
        size = self.size
        aspect = float(np.exp(rng.uniform(-0.3, 0.3)))
        extent = radius * _EXTENT[shape] * max(aspect, 1 / aspect) * 1.02 + 1
        margin = min(0.6 * extent, size / 2)
        cx, cy = rng.uniform(margin, size - margin, 2)
        x0, x1 = max(0, int(cx - extent)), min(size, int(cx + extent) + 2)
        y0, y1 = max(0, int(cy - extent)), min(size, int(cy + extent) + 2)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        xs = self.coords[x0:x1] - np.float32(cx)
        ys = (self.coords[y0:y1] - np.float32(cy))[:, None]
        su, sv = np.float32(1 / (radius * aspect)), np.float32(aspect / radius)
        u = (xs * (cos * su))[None, :] + ys * (sin * su)
        v = (xs * (-sin * sv))[None, :] + ys * (cos * sv)
        return _shape_inside(rng, shape, u, v, star_points), (y0, x0)

    def draw_object(self, rng: np.random.Generator, style: ClassStyle, area: float,
                    image: np.ndarray, instances: np.ndarray, instance_id: int) -> None:
        """Paint one instance of ``style`` covering about ``area`` pixels."""
        radius = float(np.sqrt(area / _UNIT_AREA[style.shape]))
        inside, (y0, x0) = self._outline(rng, style.shape, radius, style.star_points)
        h, w = inside.shape
        pattern = self._texture(rng, style, h, w)[inside]
        primary = _hsv(style.hue + rng.uniform(-10, 10), rng.uniform(*style.saturation),
                       rng.uniform(*style.value))
        if style.secondary == "dark":
            secondary = primary * rng.uniform(0.2, 0.4)
        elif style.secondary == "light":
            secondary = primary + (255 - primary) * rng.uniform(0.7, 0.9)
        else:
            secondary = _hsv(float(style.secondary) + rng.uniform(-8, 8), rng.uniform(0.8, 1),
                             rng.uniform(0.75, 1.0))
        pixels = primary + (secondary - primary) * pattern[:, None]
        image[y0:y0 + h, x0:x0 + w][inside] = pixels.astype(np.uint8)
        instances[y0:y0 + h, x0:x0 + w][inside] = instance_id

    def _texture(self, rng: np.random.Generator, style: ClassStyle, h: int, w: int) -> np.ndarray:
        """Pattern in [0, 1] over an h x w box (texture orientation independent of outline)."""
        kind = style.texture
        if kind == "noise":
            tile = _crop(rng, self.assets.noise, max(h, w))[:h, :w]
            return np.clip((tile - 0.5) * rng.uniform(3, 4.5) + 0.5, 0, 1)
        angle = rng.uniform(0, np.pi)
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        xs, ys = self.coords[:w], self.coords[:h, None]
        if kind == "gradient":
            span = np.float32(1 / max(h, w, 1))
            t = (xs * (cos * span))[None, :] + ys * (sin * span)
            return np.clip((t - t.mean()) * 1.6 + 0.5, 0, 1)
        period = np.float32(rng.uniform(*style.period) * self.scale)
        k = np.float32(1 / period)
        a = (xs * (cos * k))[None, :] + ys * (sin * k) + np.float32(rng.random())
        if kind == "stripes":
            return (a - np.floor(a) < 0.5).astype(np.float32)
        b = (xs * (-sin * k))[None, :] + ys * (cos * k) + np.float32(rng.random())
        if kind == "checker":
            return ((np.floor(a) + np.floor(b)) % 2).astype(np.float32)
        if kind == "dots":
            a -= np.round(a)
            b -= np.round(b)
            return (a * a + b * b < np.float32(0.09)).astype(np.float32)
        raise DatasetError(f"unknown texture {kind!r}")


def _shape_inside(rng: np.random.Generator, shape: str, u: np.ndarray, v: np.ndarray,
                  star_points: int) -> np.ndarray:
    """Implicit outline test on object-frame coordinates (unit radius)."""
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "tile":
        u2, v2 = u * u, v * v
        return u2 * u2 + v2 * v2 <= 1
    if shape == "ring":
        r2 = u * u + v * v
        inner = np.float32(rng.uniform(0.45, 0.6) ** 2)
        return (r2 <= 1) & (r2 >= inner)
    if shape == "crescent":
        offset = np.float32(rng.uniform(0.4, 0.55))
        cut = u - offset
        return (u * u + v * v <= 1) & (cut * cut + v * v > np.float32(0.75))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        arm = np.float32(rng.uniform(0.28, 0.38))
        return ((au <= arm) & (av <= 1)) | ((av <= arm) & (au <= 1))
    if shape in ("triangle", "hexagon"):
        sides = 3 if shape == "triangle" else 6
        apothem = np.float32(np.cos(np.pi / sides))
        inside = np.ones(u.shape, bool)
        for k in range(sides):
            alpha = 2 * np.pi * k / sides + np.pi / 2
            inside &= u * np.float32(np.cos(alpha)) + v * np.float32(np.sin(alpha)) <= apothem
        return inside
    if shape == "heart":
        x, y = u * np.float32(0.95), v * np.float32(-0.95) + np.float32(0.1)
        x2 = x * x
        q = x2 + y * y - 1
        return q * q * q - x2 * y * y * y <= 0
    # polar shapes: cos(k*theta) by Chebyshev recurrence, no arctan2
    r = np.sqrt(u * u + v * v) + np.float32(1e-6)
    c, s = u / r, v / r
    if shape == "star":
        depth = rng.uniform(0.35, 0.5)
        prev, cur = np.ones_like(c), c
        for _ in range(star_points - 1):
            prev, cur = cur, 2 * c * cur - prev
        return r <= np.float32(1 - depth / 2) + np.float32(depth / 2) * cur
    if shape == "blob":
        bound = np.ones_like(r)
        cos_k, sin_k = c, s
        for k in range(2, 5):
            cos_k, sin_k = cos_k * c - sin_k * s, sin_k * c + cos_k * s
            amp, phase = rng.uniform(0.08, 0.2) / (k - 1) ** 0.5, rng.uniform(0, 2 * np.pi)
            bound += (np.float32(amp * np.cos(phase)) * cos_k
                      - np.float32(amp * np.sin(phase)) * sin_k)
        return r <= bound
    raise DatasetError(f"unknown shape {shape!r}")


def _ignore_band(instances: np.ndarray) -> np.ndarray:
    """3-px band around every boundary between different instance ids."""
    band = np.zeros(instances.shape, bool)
    horizontal = instances[:, 1:] != instances[:, :-1]
    vertical = instances[1:] != instances[:-1]
    band[:, 1:] |= horizontal
    band[:, :-1] |= horizontal
    band[1:] |= vertical
    band[:-1] |= vertical
    band[1:] |= band[:-1].copy()
    band[:, 1:] |= band[:, :-1].copy()
    return band


class Synthetic5i:
    """Seeded synthetic-5i episodes of one fold and split (see the module docstring)."""

    def __init__(self, fold: int, split: str = "test", seed: int = 0,
                 image_size: int = 321) -> None:
        self.fold = check_fold(fold)
        self.split = check_split(split)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
        if image_size < 32:
            raise DatasetError(f"image_size must be at least 32, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.classes: list[int] = fold_classes(self.fold, self.split)
        self._renderer = _Renderer(self.image_size)

    def __repr__(self) -> str:
        return (f"Synthetic5i(fold={self.fold}, split={self.split!r}, seed={self.seed}, "
                f"image_size={self.image_size})")

    def _rng(self, role: int, *key: int) -> np.random.Generator:
        return episode_rng(SALT, SPLIT_CODE[self.split], self.fold, self.seed, role, *key)

    def _distractor_pool(self, target: int) -> list[int]:
        pool = self.classes if self.split == "train" else range(1, NUM_CLASSES + 1)
        return [c for c in pool if c != target]

    def _check_class(self, class_id: int) -> int:
        if class_id not in self.classes:
            raise DatasetError(f"class {class_id} is not in the {self.split} classes "
                             f"{self.classes} of fold {self.fold}")
        return int(class_id)

    def render(self, rng: np.random.Generator, target: int, distractor_prob: float) -> Scene:
        """Draw one scene with target objects of ``target`` from ``rng``."""
        renderer, size = self._renderer, self.image_size
        pixels = size * size
        pool = self._distractor_pool(target)
        for _attempt in range(20):
            image = renderer.background(rng)
            instances = np.zeros((size, size), np.uint8)
            n_targets = int(rng.choice(3, p=(0.6, 0.3, 0.1))) + 1
            weights = rng.dirichlet(np.full(n_targets, 3.0))
            total = rng.uniform(0.08, 0.3) * pixels
            objects = [(target, max(total * w, 0.025 * pixels)) for w in weights]
            if rng.random() < distractor_prob:
                n_distractors = min(int(rng.choice(2, p=(0.7, 0.3))) + 1, 4 - n_targets)
                for cls in rng.choice(pool, n_distractors):
                    objects.append((int(cls), rng.uniform(0.04, 0.15) * pixels))
            order = rng.permutation(len(objects))
            classes = np.zeros(256, np.uint8)
            for instance_id, position in enumerate(order, start=1):
                cls, area = objects[position]
                classes[instance_id] = cls
                renderer.draw_object(rng, CLASS_STYLES[cls - 1], area, image, instances,
                                     instance_id)
            label = classes[instances]
            label[_ignore_band(instances)] = IGNORE
            if np.count_nonzero(label == target) < MIN_TARGET_FRACTION * pixels:
                continue
            counts = np.bincount(label.ravel(), minlength=256)
            distractors = tuple(c for c in range(1, NUM_CLASSES + 1)
                                if c != target and counts[c] > 0)
            return Scene(image, label, target, distractors)
        raise RuntimeError(f"could not place a visible class-{target} object in 20 attempts")

    def sample(self, class_id: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image number ``index`` containing ``class_id``, and its 0/1/255 mask."""
        scene = self.sample_scene(class_id, index)
        return scene.image, scene.mask

    def sample_scene(self, class_id: int, index: int) -> Scene:
        """Like sample() but returns the Scene (label map and distractor info)."""
        class_id = self._check_class(class_id)
        return self.render(self._rng(ROLE_SAMPLE, class_id, index), class_id,
                           QUERY_DISTRACTOR_PROB)

    def episode_class(self, index: int) -> int:
        """Class of episode ``index`` (classes cycle, so they are balanced)."""
        if index < 0:
            raise DatasetError(f"episode index must be non-negative, got {index}")
        return self.classes[index % len(self.classes)]

    def episode_scenes(self, index: int, shots: int = 1) -> tuple[list[Scene], Scene]:
        """Support scenes and query scene of episode ``index``."""
        shots = check_shots(shots)
        target = self.episode_class(index)
        supports = [self.render(self._rng(ROLE_SUPPORT, index, j), target,
                                SUPPORT_DISTRACTOR_PROB) for j in range(shots)]
        query = self.render(self._rng(ROLE_QUERY, index), target, QUERY_DISTRACTOR_PROB)
        return supports, query

    def episode(self, index: int, shots: int = 1) -> Episode:
        """Episode ``index``: deterministic from (fold, split, seed, index, shots)."""
        supports, query = self.episode_scenes(index, shots)
        return Episode(
            class_id=query.target,
            support_images=tuple(s.image for s in supports),
            support_masks=tuple(s.mask for s in supports),
            query_image=query.image,
            query_mask=query.mask,
        )

    def episodes(self, count: int, shots: int = 1, start: int = 0) -> Iterator[Episode]:
        """Episodes start .. start+count-1."""
        for index in range(start, start + count):
            yield self.episode(index, shots)

    def write_voc(self, root: Path, count: int) -> None:
        """Write ``count`` images in VOC layout under ``root``.

        JPEGImages/<stem>.jpg, SegmentationClassAug/<stem>.png (class ids, 255 ignore) and
        ImageSets/Segmentation/val.txt (test split) or train_aug.txt (train split).
        Image i shows class ``classes[i % len(classes)]`` (its sample number i // len).
        """
        from PIL import Image

        root = Path(root)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        stems = []
        for i in range(count):
            n = len(self.classes)
            scene = self.sample_scene(self.classes[i % n], i // n)
            stem = f"syn5i_{self.split}_f{self.fold}_s{self.seed}_{i:06d}"
            Image.fromarray(scene.image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
            Image.fromarray(scene.label).save(root / "SegmentationClassAug" / f"{stem}.png")
            stems.append(stem)
        name = "val.txt" if self.split == "test" else "train_aug.txt"
        (root / "ImageSets" / "Segmentation" / name).write_text("\n".join(stems) + "\n")


VOC_PALETTE_SIZE = 256


def voc_palette() -> list[int]:
    """VOC's colour map (the bit-interleaved one of the devkit), flat RGB x 256."""
    palette = []
    for index in range(VOC_PALETTE_SIZE):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


def write_voc_tree(root: Path, fold: int = 0, train_images: int = 45, test_images: int = 15,
                   seed: int = 0) -> Path:
    """A small PASCAL VOC2012-layout tree of synthetic-5i images, as on a user's disk.

    JPEGImages/*.jpg; SegmentationClassAug/*.png (grey class ids, 255 boundary bands);
    SegmentationClass/*.png (the same labels as VOC palette PNGs); ImageSets/Segmentation/
    train_aug.txt (base-class images of ``fold``) and val.txt (novel-class images).
    """
    from PIL import Image

    root = Path(root)
    Synthetic5i(fold, split="train", seed=seed).write_voc(root, train_images)
    Synthetic5i(fold, split="test", seed=seed).write_voc(root, test_images)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    palette = voc_palette()
    for grey in sorted((root / "SegmentationClassAug").glob("*.png")):
        with Image.open(grey) as label:
            indexed = label.convert("P") if label.mode != "L" else Image.fromarray(
                np.asarray(label), mode="P")
        indexed.putpalette(palette)
        indexed.save(root / "SegmentationClass" / grey.name)
    return root


def write_preview(path: Path, fold: int, shots: int, count: int, seed: int, split: str
                  ) -> None:
    """PNG grid: one row per episode: supports (mask outlined yellow) | query | query mask."""
    from PIL import Image

    dataset = Synthetic5i(fold, split=split, seed=seed)
    rows = []
    for episode in dataset.episodes(count, shots):
        tiles = []
        for image, mask in zip(episode.support_images, episode.support_masks, strict=True):
            shown = image.copy()
            fg = mask == 1
            edge = fg & ~(np.roll(fg, 2, 0) & np.roll(fg, -2, 0) & np.roll(fg, 2, 1)
                          & np.roll(fg, -2, 1))
            shown[edge] = (255, 255, 0)
            tiles.append(shown)
        tiles.append(episode.query_image)
        colors = np.array([[0, 0, 0], [255, 255, 255]] + [[0, 0, 0]] * 253 + [[128, 128, 128]],
                          np.uint8)
        tiles.append(colors[episode.query_mask])
        gap = np.full((episode.query_image.shape[0], 4, 3), 255, np.uint8)
        row = []
        for tile in tiles:
            row += [tile, gap]
        rows.append(np.concatenate(row[:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)


def images_per_second(count: int, shots: int) -> float:
    """Generation speed: images (queries + supports) per second over ``count`` episodes."""
    dataset = Synthetic5i(0, split="train", seed=0)
    dataset.episode(0, shots)  # warm the asset cache
    start = time.perf_counter()
    for index in range(count):
        dataset.episode(index, shots)
    elapsed = time.perf_counter() - start
    return count * (shots + 1) / elapsed


if __name__ == "__main__":  # `python -m crnet.data.synthetic ...` is `crnet synthetic ...`
    from crnet.cli import main

    sys.exit(main(["synthetic", *sys.argv[1:]]))
