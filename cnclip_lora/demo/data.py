"""Synthetic data in the exact iFLYTEK competition layout, for demos and end-to-end tests.

The real data cannot be redistributed and nothing can be downloaded in tests, yet every
part of the package (reading, training, retrieval, scoring) needs a data folder shaped
like ``xfdata/``. This module draws one: product-like pictures whose visible attributes
(item type, colour, pattern, neckline, sleeves, shape, size) are written into noisy
Taobao-style titles, so a model can actually learn the text-image link, and with an
answer key (``test_answers.csv``) so the demo can score itself.

One engine serves every domain: a :class:`DomainSpec` holds the vocabularies and one
pair of drawing functions per item type. ``clothing`` mimics the competition;
``homeware`` is a second domain to check that fine-tuning generalises to data the
package was not tuned on.

Every drawing is symmetric about the item's vertical axis and no image carries text,
so a horizontal flip (a training augmentation) never makes a title false.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from cnclip_lora.errors import ConfigError
from cnclip_lora.utils.files import atomic_path, atomic_write_text

__all__ = [
    "DOMAINS",
    "DomainSpec",
    "Geo",
    "ItemType",
    "NoiseVocab",
    "Palette",
    "get_domain",
    "make_demo_data",
]

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Attrs = Mapping[str, str]

OUTPUT_CSVS = ("train.csv", "test_query.csv", "sample_submit.csv", "test_answers.csv")
SUPERSAMPLE = 2  # draw at 2x and downscale: cheap anti-aliasing with plain ImageDraw
JPEG_QUALITY = (85, 92)  # varied like real shop photos


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geo:
    """Maps item coordinates to pixels.

    Item coordinates have the item's axis of symmetry at ``x = 0`` and span roughly
    ``[-1, 1]`` on both axes (``y`` grows downwards), whatever the canvas size, jitter
    or item scale. Drawing functions only ever see these coordinates.
    """

    cx: float
    cy: float
    u: float  # pixels per item unit

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + x * self.u, self.cy + y * self.u)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [self.cx + x0 * self.u, self.cy + y0 * self.u, self.cx + x1 * self.u, self.cy + y1 * self.u]

    def sym(self, half: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        """Close a right-half outline (top centre -> bottom centre, ``x >= 0``) by mirroring it."""
        right = [self.p(x, y) for x, y in half]
        left = [self.p(-x, y) for x, y in reversed(half)]
        return right + left

    def w(self, t: float) -> int:
        """A line width of ``t`` item units, at least one pixel."""
        return max(1, round(t * self.u))


@dataclass(frozen=True)
class Palette:
    """Colours derived from the item's fill colour, so details stay visible on any fill."""

    fill: RGB
    line: RGB  # seams, collars, rims: contrasts with the fill
    shade: RGB  # openings and insides: darker than the fill
    light: RGB  # raised parts (collar flaps): lighter than the fill
    metal: RGB  # parts that do not take the item colour (lamp pole)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _palette(fill: RGB, metal: RGB) -> Palette:
    dark = _luma(fill) < 70
    return Palette(
        fill=fill,
        line=_mix(fill, (255, 255, 255), 0.45) if dark else _mix(fill, (0, 0, 0), 0.45),
        shade=_mix(fill, (255, 255, 255), 0.25) if dark else _mix(fill, (0, 0, 0), 0.35),
        light=_mix(fill, (255, 255, 255), 0.35),
        metal=metal,
    )


# --------------------------------------------------------------------------- domain spec

ShapeFn = Callable[[ImageDraw.ImageDraw, Geo, Attrs], None]
DetailFn = Callable[[ImageDraw.ImageDraw, Geo, Attrs, Palette], None]


@dataclass(frozen=True)
class ItemType:
    """One kind of item: its title word, its own visible attributes and how to draw it.

    Args:
        word: The word naming the item in titles (``"T恤"``, ``"花瓶"``).
        slots: Item-specific visible attributes as ``(slot name, options)`` pairs; every
            option must change the drawing.
        shape: Draws the silhouette into an ``L`` mask (255 = item, 0 = cut-out). The
            engine fills it with the colour and pattern and outlines it.
        details: Draws seams, collars, rims... on top of the filled item.
    """

    word: str
    slots: tuple[tuple[str, tuple[str, ...]], ...]
    shape: ShapeFn
    details: DetailFn | None = None


@dataclass(frozen=True)
class NoiseVocab:
    """Title words that say nothing visible (shops, years, promotions, sizes, codes)."""

    shops: tuple[str, ...]
    latin: tuple[str, ...]
    times: tuple[str, ...]  # seasons or occasions, glued after an optional year
    promos: tuple[str, ...]
    fillers: tuple[str, ...]  # slipped in among the visible words
    suffixes: tuple[str, ...]  # after the item word ("女", "礼盒装")
    sizes: tuple[str, ...]


@dataclass(frozen=True)
class DomainSpec:
    """Everything that makes a domain; the generator engine itself is shared.

    Args:
        name: Domain name used by ``make_demo_data(domain=...)``.
        items: The item types.
        colours: Colour word -> RGB fill, shared by all items.
        patterns: Pattern word -> pattern id (``solid``, ``stripes``, ``check``,
            ``dots``, ``print``), shared by all items.
        size_scale: Option of the ``size`` slot -> drawing scale; empty when no item
            has a ``size`` slot.
        noise: Words that titles carry but images do not show.
        metal: Colour of parts that do not take the item colour.
    """

    name: str
    items: tuple[ItemType, ...]
    colours: Mapping[str, RGB]
    patterns: Mapping[str, str]
    noise: NoiseVocab
    size_scale: Mapping[str, float] = field(default_factory=dict)
    metal: RGB = (70, 70, 75)

    def visible_words(self) -> set[str]:
        """Every word that names something visible (used to keep noise words apart)."""
        words = set(self.colours) | set(self.patterns) | {it.word for it in self.items}
        for it in self.items:
            for _, options in it.slots:
                words.update(options)
        return words


# --------------------------------------------------------------------------- patterns


def _contrast(fill: RGB) -> RGB:
    return _mix(fill, (25, 25, 40), 0.6) if _luma(fill) > 150 else _mix(fill, (255, 255, 255), 0.7)


def _mirrored_xs(cx: float, offset: float, period: float, width: int) -> list[float]:
    """Column positions symmetric about ``cx`` covering the canvas."""
    xs: list[float] = []
    x = offset
    while x < width:
        xs.extend((cx + x, cx - x))
        x += period
    return xs


_FLOWER_COLOURS: tuple[RGB, ...] = ((235, 90, 120), (250, 215, 80), (255, 255, 255), (90, 160, 90), (120, 90, 200))


# Five petals with one pointing straight up, so each flower is itself mirror-symmetric.
_PETAL_OFFSETS = ((0.0, -1.0), (0.95, -0.31), (0.59, 0.81), (-0.59, 0.81), (-0.95, -0.31))


def _flower(d: ImageDraw.ImageDraw, centre: tuple[float, float], r: float, petal: RGB, heart: RGB) -> None:
    fx, fy = centre
    for ox, oy in _PETAL_OFFSETS:
        px, py = fx + ox * r, fy + oy * r
        d.ellipse([px - 0.7 * r, py - 0.7 * r, px + 0.7 * r, py + 0.7 * r], fill=petal)
    d.ellipse([fx - 0.45 * r, fy - 0.45 * r, fx + 0.45 * r, fy + 0.45 * r], fill=heart)


def _texture(pattern: str, fill: RGB, geo: Geo, size: int, rng: random.Random) -> Image.Image:
    """Fill the whole canvas with ``pattern``, mirror-symmetric about the item axis."""
    img = Image.new("RGB", (size, size), fill)
    d = ImageDraw.Draw(img)
    other = _contrast(fill)
    u = geo.u
    if pattern == "stripes":
        period = u * rng.uniform(0.15, 0.20)
        y = geo.cy - 3 * u + rng.uniform(0, period)
        while y < size:
            d.rectangle([0, y, size, y + period * 0.42], fill=other)
            y += period
    elif pattern == "check":
        period = u * rng.uniform(0.22, 0.28)
        band = _mix(fill, other, 0.45)
        y = geo.cy - 3 * u + rng.uniform(0, period)
        while y < size:
            d.rectangle([0, y, size, y + period * 0.35], fill=band)
            y += period
        for x in _mirrored_xs(geo.cx, rng.uniform(0, period / 2), period, size):
            d.rectangle([x - period * 0.17, 0, x + period * 0.17, size], fill=band)
        for x in _mirrored_xs(geo.cx, period / 2, period, size):
            d.line([x, 0, x, size], fill=other, width=max(1, round(u * 0.015)))
    elif pattern == "dots":
        period = u * rng.uniform(0.21, 0.25)
        r = period * 0.24
        y, row = geo.cy - 3 * u + rng.uniform(0, period), 0
        while y < size:
            for x in _mirrored_xs(geo.cx, (period / 2) * (row % 2), period, size):
                d.ellipse([x - r, y - r, x + r, y + r], fill=other)
            y, row = y + period * 0.87, row + 1
    elif pattern == "print":
        # A jittered grid of flowers mirrored about the axis, so narrow items get some too.
        colours = [c for c in _FLOWER_COLOURS if sum(abs(a - b) for a, b in zip(c, fill)) > 120]
        y = -1.25 + rng.uniform(0, 0.15)
        while y < 1.25:
            x = rng.uniform(0.0, 0.12)
            while x < 1.0:
                r = u * rng.uniform(0.05, 0.075)
                fy = y + rng.uniform(-0.05, 0.05)
                petal, heart = rng.choice(colours), rng.choice(colours)
                for sx in (1, -1) if x > 0.06 else (1,):
                    _flower(d, geo.p(sx * x, fy), r, petal, heart)
                x += rng.uniform(0.28, 0.38)
            y += rng.uniform(0.26, 0.34)
    elif pattern != "solid":
        raise ConfigError(f"unknown pattern id {pattern!r}: use solid, stripes, check, dots or print")
    return img


# --------------------------------------------------------------------------- clothing

_NECK_TOP = -0.70


def _top_outline(
    sleeve: str, body: float, hem: float, waist: Sequence[tuple[float, float]] = ()
) -> list[tuple[float, float]]:
    """Right half of a top or dress: neck, shoulder, sleeve, side seam, hem."""
    start = [(0.0, _NECK_TOP), (0.13, _NECK_TOP), (0.33, -0.62)]
    if sleeve == "无袖":
        arm = [(body - 0.05, -0.50), (body, -0.30)]
    elif sleeve == "短袖":
        arm = [(body + 0.25, -0.40), (body + 0.15, -0.22), (body, -0.32)]
    else:  # long sleeve hangs beside the body with a visible gap
        arm = [(body + 0.22, -0.36), (body + 0.32, 0.45), (body + 0.17, 0.48), (body + 0.05, -0.10), (body, -0.30)]
    return start + arm + list(waist) + [(body if not waist else waist[-1][0], hem), (0.0, hem)]


def _neck_shape(d: ImageDraw.ImageDraw, g: Geo, neck: str) -> None:
    if neck == "圆领":
        d.ellipse(g.box(-0.16, -0.84, 0.16, -0.54), fill=0)
    elif neck == "V领":
        d.polygon([g.p(-0.16, -0.72), g.p(0.16, -0.72), g.p(0.0, -0.36)], fill=0)
    elif neck == "高领":
        d.rectangle(g.box(-0.15, -0.88, 0.15, -0.66), fill=255)
    elif neck == "翻领":
        d.polygon([g.p(-0.10, -0.72), g.p(0.10, -0.72), g.p(0.0, -0.50)], fill=0)
    elif neck == "连帽":
        d.ellipse(g.box(-0.25, -1.02, 0.25, -0.55), fill=255)


def _neck_details(d: ImageDraw.ImageDraw, g: Geo, neck: str, pal: Palette) -> None:
    lw = g.w(0.025)
    if neck == "圆领":
        d.arc(g.box(-0.19, -0.87, 0.19, -0.51), 0, 180, fill=pal.line, width=lw)
    elif neck == "V领":
        d.line([g.p(-0.19, -0.70), g.p(0.0, -0.32), g.p(0.19, -0.70)], fill=pal.line, width=lw, joint="curve")
    elif neck == "高领":
        d.rectangle(g.box(-0.15, -0.88, 0.15, -0.66), outline=pal.line, width=lw)
        for x in (-0.10, -0.05, 0.0, 0.05, 0.10):
            d.line([g.p(x, -0.86), g.p(x, -0.68)], fill=pal.line, width=max(1, lw // 2))
    elif neck == "翻领":
        for s in (1, -1):
            flap = [g.p(s * 0.01, -0.50), g.p(s * 0.10, -0.73), g.p(s * 0.25, -0.68), g.p(s * 0.17, -0.44)]
            d.polygon(flap, fill=pal.light, outline=pal.line, width=lw)
    elif neck == "连帽":
        d.ellipse(g.box(-0.14, -0.94, 0.14, -0.64), fill=pal.shade, outline=pal.line, width=lw)
        for s in (1, -1):
            d.line([g.p(s * 0.07, -0.62), g.p(s * 0.07, -0.38)], fill=pal.line, width=lw)
            d.ellipse(g.box(s * 0.07 - 0.025, -0.40, s * 0.07 + 0.025, -0.35), fill=pal.line)


def _garment(body: float, hem: float, waist: Sequence[tuple[float, float]] = ()) -> ShapeFn:
    def shape(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
        d.polygon(g.sym(_top_outline(a["sleeve"], body, hem, waist)), fill=255)
        _neck_shape(d, g, a["neck"])

    return shape


def _details_tshirt(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    _neck_details(d, g, a["neck"], pal)


def _details_shirt(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    top = {"V领": -0.34, "翻领": -0.48}.get(a["neck"], -0.52)
    d.line([g.p(0, top), g.p(0, 0.70)], fill=pal.line, width=g.w(0.02))
    y = top + 0.12
    while y < 0.66:
        d.ellipse(g.box(-0.025, y - 0.025, 0.025, y + 0.025), fill=pal.line)
        y += 0.17
    _neck_details(d, g, a["neck"], pal)


def _details_hoodie(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    lw = g.w(0.022)
    d.line([g.p(-0.46, 0.50), g.p(0.46, 0.50)], fill=pal.line, width=lw)
    d.polygon(g.sym([(0.0, 0.14), (0.20, 0.14), (0.28, 0.42), (0.0, 0.42)]), outline=pal.line, width=lw)
    _neck_details(d, g, a["neck"], pal)


def _details_coat(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    lw = g.w(0.022)
    d.line([g.p(0, -0.52), g.p(0, 0.75)], fill=pal.line, width=g.w(0.03))
    for s in (1, -1):
        d.rectangle(g.box(min(s * 0.16, s * 0.34), 0.30, max(s * 0.16, s * 0.34), 0.48), outline=pal.line, width=lw)
    _neck_details(d, g, a["neck"], pal)


def _details_sweater(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    lw = max(1, g.w(0.012))
    for x in (k * 0.06 for k in range(-7, 8)):
        d.line([g.p(x, 0.50), g.p(x, 0.60)], fill=pal.line, width=lw)
    d.line([g.p(-0.44, 0.50), g.p(0.44, 0.50)], fill=pal.line, width=lw)
    _neck_details(d, g, a["neck"], pal)


def _details_dress(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    d.line([g.p(-0.27, -0.04), g.p(0.27, -0.04)], fill=pal.line, width=g.w(0.04))
    _neck_details(d, g, a["neck"], pal)


def _skirt_geometry(a: Attrs) -> tuple[float, float, float]:
    top, hem = (-0.75, 0.85) if a["length"] == "长款" else (-0.45, 0.40)
    drop = hem - top
    hem_x = {"A字": 0.30 + 0.42 * drop, "百褶": 0.30 + 0.42 * drop, "包臀": 0.34 + 0.03 * drop}[a["cut"]]
    return top, hem, hem_x


def _shape_skirt(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    top, hem, hem_x = _skirt_geometry(a)
    d.rectangle(g.box(-0.31, top - 0.12, 0.31, top), fill=255)
    hip = 0.36 if a["cut"] == "包臀" else 0.34
    d.polygon(g.sym([(0.0, top), (0.30, top), (hip, top + 0.25), (hem_x, hem), (0.0, hem)]), fill=255)


def _details_skirt(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    top, hem, hem_x = _skirt_geometry(a)
    lw = g.w(0.022)
    d.line([g.p(-0.31, top), g.p(0.31, top)], fill=pal.line, width=lw)
    if a["cut"] == "百褶":
        for k in range(1, 6):
            t = k / 6
            for s in (1, -1):
                d.line([g.p(s * 0.30 * t, top), g.p(s * hem_x * t, hem)], fill=pal.line, width=max(1, lw // 2))
        d.line([g.p(0, top), g.p(0, hem)], fill=pal.line, width=max(1, lw // 2))


def _pants_geometry(a: Attrs) -> tuple[float, float, float, float, float]:
    top, hem, crotch = (-0.85, 0.90, -0.20) if a["length"] == "长款" else (-0.45, 0.30, 0.02)
    outer, inner = (0.52, 0.05) if a["fit"] == "阔腿" else (0.37, 0.09)
    return top, hem, crotch, outer, inner


def _shape_pants(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    top, hem, crotch, outer, inner = _pants_geometry(a)
    d.polygon(g.sym([(0.0, top), (0.34, top), (0.36, top + 0.2), (outer, hem), (inner, hem), (0.0, crotch)]), fill=255)


def _details_pants(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    top, _, crotch, _, _ = _pants_geometry(a)
    lw = g.w(0.022)
    d.line([g.p(-0.34, top + 0.1), g.p(0.34, top + 0.1)], fill=pal.line, width=lw)
    d.line([g.p(0, top + 0.1), g.p(0, crotch - 0.08)], fill=pal.line, width=lw)


_SLEEVES3 = ("长袖", "短袖", "无袖")
_SLEEVES2 = ("长袖", "短袖")

CLOTHING = DomainSpec(
    name="clothing",
    items=(
        ItemType(
            "T恤", (("neck", ("圆领", "V领", "高领")), ("sleeve", _SLEEVES2)), _garment(0.40, 0.62), _details_tshirt
        ),
        ItemType(
            "衬衫", (("neck", ("翻领", "圆领", "V领")), ("sleeve", _SLEEVES3)), _garment(0.40, 0.70), _details_shirt
        ),
        ItemType(
            "卫衣", (("neck", ("圆领", "连帽", "高领")), ("sleeve", _SLEEVES2)), _garment(0.46, 0.60), _details_hoodie
        ),
        ItemType(
            "外套", (("neck", ("翻领", "连帽", "高领")), ("sleeve", ("长袖",))), _garment(0.46, 0.75), _details_coat
        ),
        ItemType(
            "毛衣", (("neck", ("圆领", "V领", "高领")), ("sleeve", _SLEEVES2)), _garment(0.44, 0.60), _details_sweater
        ),
        ItemType(
            "连衣裙",
            (("neck", ("圆领", "V领", "翻领", "高领")), ("sleeve", _SLEEVES3)),
            _garment(0.32, 0.92, waist=((0.27, -0.04), (0.62, 0.92))),
            _details_dress,
        ),
        ItemType(
            "半身裙", (("length", ("长款", "短款")), ("cut", ("A字", "百褶", "包臀"))), _shape_skirt, _details_skirt
        ),
        ItemType("裤子", (("length", ("长款", "短款")), ("fit", ("阔腿", "直筒"))), _shape_pants, _details_pants),
    ),
    colours={
        "红色": (200, 35, 45),
        "蓝色": (35, 75, 190),
        "黑色": (28, 28, 32),
        "白色": (246, 246, 244),
        "绿色": (45, 140, 65),
        "黄色": (240, 200, 45),
        "粉色": (245, 160, 190),
        "紫色": (120, 60, 160),
        "灰色": (130, 130, 134),
        "卡其色": (190, 165, 118),
    },
    patterns={"纯色": "solid", "条纹": "stripes", "格子": "check", "波点": "dots", "印花": "print"},
    noise=NoiseVocab(
        shops=(
            "云思木想",
            "南风衣橱",
            "柚子家",
            "若水小铺",
            "森屿时光",
            "暖阳衣社",
            "橘猫小姐",
            "星辰衣舍",
            "花间集",
            "木槿生活馆",
        ),
        latin=("YSMX", "LOVEME", "ZQ", "MUMU", "KOKO", "chic", "ins风", "Lady"),
        times=("春装", "秋装", "冬季", "夏季", "春秋款", "秋冬", "早春"),
        promos=(
            "新款",
            "爆款",
            "包邮",
            "韩版",
            "宽松",
            "修身",
            "百搭",
            "显瘦",
            "洋气",
            "网红",
            "气质",
            "复古",
            "日系",
            "港风",
            "学生",
        ),
        fillers=("弹力", "纯棉", "加绒", "薄款", "前后打揽", "织带", "减龄", "时尚"),
        suffixes=("女", "女装", "女士", "女生", "少女"),
        sizes=("S-XL", "M码", "大码", "XXL", "均码", "165/88A"),
    ),
)


# --------------------------------------------------------------------------- homeware


def _shape_cup(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    half = [(0.0, -0.70), (0.36, -0.70), (0.30, 0.72), (0.0, 0.72)]
    if a["shape"] == "收腰":
        half = [(0.0, -0.70), (0.40, -0.70), (0.24, 0.0), (0.36, 0.72), (0.0, 0.72)]
    d.polygon(g.sym(half), fill=255)
    rim, foot = (0.40, 0.36) if a["shape"] == "收腰" else (0.36, 0.30)
    d.ellipse(g.box(-rim, -0.78, rim, -0.62), fill=255)
    d.ellipse(g.box(-foot, 0.64, foot, 0.80), fill=255)  # rounded base, seen slightly from above


def _details_cup(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    rim = 0.40 if a["shape"] == "收腰" else 0.36
    d.ellipse(g.box(-rim + 0.04, -0.76, rim - 0.04, -0.64), fill=pal.shade, outline=pal.line, width=g.w(0.02))


def _shape_vase(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    if a["shape"] == "圆肚":
        d.rectangle(g.box(-0.13, -0.90, 0.13, -0.40), fill=255)
        d.ellipse(g.box(-0.58, -0.50, 0.58, 0.88), fill=255)
    elif a["shape"] == "细长":
        half = [(0.0, -0.92), (0.22, -0.92), (0.12, -0.74), (0.12, -0.35), (0.30, 0.25), (0.25, 0.90), (0.0, 0.90)]
        d.polygon(g.sym(half), fill=255)
    else:  # 方形
        d.rectangle(g.box(-0.15, -0.90, 0.15, -0.45), fill=255)
        d.polygon(g.sym([(0.0, -0.62), (0.15, -0.62), (0.44, -0.42), (0.44, 0.88), (0.0, 0.88)]), fill=255)
    d.ellipse(g.box(-0.20, -0.97, 0.20, -0.86), fill=255)


def _details_vase(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    d.ellipse(g.box(-0.15, -0.95, 0.15, -0.88), fill=pal.shade)


_LAMP_SHADE_BOTTOM = {"锥形": -0.20, "圆筒": -0.20, "球形": -0.12}


def _shape_lamp(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    if a["shape"] == "锥形":
        d.polygon(g.sym([(0.0, -0.90), (0.24, -0.90), (0.58, -0.20), (0.0, -0.20)]), fill=255)
    elif a["shape"] == "圆筒":
        d.rectangle(g.box(-0.42, -0.92, 0.42, -0.20), fill=255)
    else:  # 球形
        d.ellipse(g.box(-0.44, -0.98, 0.44, -0.10), fill=255)


def _details_lamp(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    y0 = _LAMP_SHADE_BOTTOM[a["shape"]]
    d.rectangle(g.box(-0.035, y0, 0.035, 0.74), fill=pal.metal)
    d.ellipse(g.box(-0.34, 0.66, 0.34, 0.90), fill=pal.metal)


def _shape_cushion(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    if a["shape"] == "圆形":
        d.ellipse(g.box(-0.74, -0.74, 0.74, 0.74), fill=255)
    else:
        half_w, half_h = (0.72, 0.72) if a["shape"] == "方形" else (0.88, 0.46)
        d.rounded_rectangle(g.box(-half_w, -half_h, half_w, half_h), radius=0.14 * g.u, fill=255)


def _details_cushion(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    lw = g.w(0.02)
    if a["shape"] == "圆形":
        d.ellipse(g.box(-0.66, -0.66, 0.66, 0.66), outline=pal.line, width=lw)
    else:
        half_w, half_h = (0.64, 0.64) if a["shape"] == "方形" else (0.80, 0.38)
        d.rounded_rectangle(g.box(-half_w, -half_h, half_w, half_h), radius=0.10 * g.u, outline=pal.line, width=lw)


def _box_geometry(a: Attrs) -> tuple[float, float, float]:
    return (0.60, -0.35, 0.80) if a["shape"] == "方形" else (0.86, -0.10, 0.62)


def _shape_box(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    w, top, bottom = _box_geometry(a)
    d.rectangle(g.box(-w, top, w, bottom), fill=255)
    d.polygon(g.sym([(0.0, top - 0.28), (w - 0.14, top - 0.28), (w, top), (0.0, top)]), fill=255)
    if a["lid"] == "带盖":
        d.rectangle(g.box(-w - 0.04, top - 0.02, w + 0.04, top + 0.16), fill=255)


def _details_box(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    w, top, _ = _box_geometry(a)
    lw = g.w(0.022)
    if a["lid"] == "带盖":
        d.rectangle(g.box(-w - 0.04, top - 0.02, w + 0.04, top + 0.16), outline=pal.line, width=lw)
        d.ellipse(g.box(-0.14, top + 0.28, 0.14, top + 0.38), fill=pal.shade)
    else:
        opening = [(0.0, top - 0.22), (w - 0.18, top - 0.22), (w - 0.06, top - 0.03), (0.0, top - 0.03)]
        d.polygon(g.sym(opening), fill=pal.shade)
        d.line([g.p(-w, top), g.p(w, top)], fill=pal.line, width=lw)


def _bowl_geometry(a: Attrs) -> tuple[float, float, float]:
    return (0.76, -0.05, 0.70) if a["depth"] == "深口" else (0.84, 0.15, 0.52)


def _shape_bowl(d: ImageDraw.ImageDraw, g: Geo, a: Attrs) -> None:
    w, rim, bottom = _bowl_geometry(a)
    d.pieslice(g.box(-w, 2 * rim - bottom, w, bottom), 0, 180, fill=255)
    d.ellipse(g.box(-w, rim - 0.12, w, rim + 0.12), fill=255)
    d.rectangle(g.box(-0.22, bottom - 0.06, 0.22, bottom + 0.07), fill=255)


def _details_bowl(d: ImageDraw.ImageDraw, g: Geo, a: Attrs, pal: Palette) -> None:
    w, rim, _ = _bowl_geometry(a)
    d.ellipse(g.box(-w + 0.05, rim - 0.09, w - 0.05, rim + 0.09), fill=pal.light, outline=pal.line, width=g.w(0.02))


_SIZES = ("大号", "中号", "小号")

HOMEWARE = DomainSpec(
    name="homeware",
    items=(
        ItemType("杯子", (("shape", ("直筒", "收腰")), ("size", _SIZES)), _shape_cup, _details_cup),
        ItemType("花瓶", (("shape", ("圆肚", "细长", "方形")), ("size", _SIZES)), _shape_vase, _details_vase),
        ItemType("台灯", (("shape", ("锥形", "圆筒", "球形")), ("size", _SIZES)), _shape_lamp, _details_lamp),
        ItemType("抱枕", (("shape", ("方形", "圆形", "长方形")), ("size", _SIZES)), _shape_cushion, _details_cushion),
        ItemType(
            "收纳盒",
            (("shape", ("方形", "长方形")), ("lid", ("带盖", "无盖")), ("size", _SIZES)),
            _shape_box,
            _details_box,
        ),
        ItemType("碗", (("depth", ("深口", "浅口")), ("size", _SIZES)), _shape_bowl, _details_bowl),
    ),
    colours={
        "白色": (244, 242, 236),
        "黑色": (30, 30, 34),
        "灰色": (135, 135, 138),
        "蓝色": (50, 95, 185),
        "绿色": (70, 150, 90),
        "粉色": (240, 165, 185),
        "黄色": (242, 205, 60),
        "橙色": (235, 125, 40),
        "米色": (225, 205, 165),
        "藏青色": (30, 40, 90),
    },
    patterns={"纯色": "solid", "条纹": "stripes", "格纹": "check", "波点": "dots", "碎花": "print"},
    noise=NoiseVocab(
        shops=("木子家居", "简居生活", "北屿良品", "拾光小院", "悦家物语", "慢屋", "栖木集", "禾风家"),
        latin=("NORDIC", "HOME", "LIFE", "MOMO", "ins风", "DIY"),
        times=("新年", "乔迁", "送礼", "春季", "秋冬", "年货"),
        promos=("北欧风", "家用", "创意", "网红", "简约", "现代", "日式", "高颜值", "包邮", "新品", "特价", "轻奢"),
        fillers=("陶瓷", "客厅", "卧室", "办公室", "桌面", "耐用", "加厚", "手工"),
        suffixes=("礼盒装", "套装", "单个装", "家用", "摆件"),
        sizes=("350ml", "45x45cm", "20cm", "1L", "500ml", "30x40cm"),
    ),
    size_scale={"大号": 1.0, "中号": 0.80, "小号": 0.62},
    metal=(150, 130, 95),
)

_SPECS: dict[str, DomainSpec] = {spec.name: spec for spec in (CLOTHING, HOMEWARE)}
DOMAINS: tuple[str, ...] = tuple(_SPECS)


def get_domain(domain: str | DomainSpec) -> DomainSpec:
    """Resolve a domain name (one of :data:`DOMAINS`) or pass a custom spec through."""
    if isinstance(domain, DomainSpec):
        return domain
    try:
        return _SPECS[domain]
    except KeyError:
        raise ConfigError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}") from None


# --------------------------------------------------------------------------- items and titles

Combo = tuple[int, tuple[tuple[str, str], ...]]  # (item index, ((slot, option), ...)) incl. colour/pattern


def _slots(spec: DomainSpec, item: ItemType) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return (("colour", tuple(spec.colours)), ("pattern", tuple(spec.patterns))) + item.slots


def _n_combos(spec: DomainSpec) -> int:
    total = 0
    for item in spec.items:
        n = 1
        for _, options in _slots(spec, item):
            n *= len(options)
        total += n
    return total


def _random_combo(spec: DomainSpec, rng: random.Random) -> Combo:
    index = rng.randrange(len(spec.items))
    return index, tuple((slot, rng.choice(options)) for slot, options in _slots(spec, spec.items[index]))


def _near_miss(spec: DomainSpec, combo: Combo, rng: random.Random) -> Combo:
    """The same item with exactly one visible attribute changed: a hard negative."""
    index, attrs = combo
    choices = [(k, opts) for k, (_, opts) in enumerate(_slots(spec, spec.items[index])) if len(opts) > 1]
    k, options = rng.choice(choices)
    new = rng.choice([o for o in options if o != attrs[k][1]])
    return index, attrs[:k] + ((attrs[k][0], new),) + attrs[k + 1 :]


def _sample_combos(
    spec: DomainSpec, rng: random.Random, n_queries: int, n_distractors: int, n_train: int
) -> tuple[list[Combo], list[Combo], list[Combo]]:
    """Distinct query targets; distractors never equal to a target (half are near misses); any train."""
    targets: list[Combo] = []
    seen: set[Combo] = set()
    for _ in range(50 * n_queries):
        if len(targets) == n_queries:
            break
        combo = _random_combo(spec, rng)
        if combo not in seen:
            seen.add(combo)
            targets.append(combo)
    if len(targets) < n_queries:  # near-exhausted space: take what is left, in a seeded order
        rest = [c for c in _all_combos(spec) if c not in seen]
        rng.shuffle(rest)
        targets.extend(rest[: n_queries - len(targets)])
        seen = set(targets)
    distractors: list[Combo] = []
    for _ in range(n_distractors):
        combo = _near_miss(spec, rng.choice(targets), rng) if rng.random() < 0.5 else _random_combo(spec, rng)
        for _ in range(100):
            if combo not in seen:
                break
            combo = _random_combo(spec, rng)
        else:
            raise ConfigError("could not draw a distractor unlike every query target: lower n_queries")
        distractors.append(combo)
    train = [_random_combo(spec, rng) for _ in range(n_train)]
    return targets, distractors, train


def _all_combos(spec: DomainSpec) -> list[Combo]:
    out: list[Combo] = []
    for index, item in enumerate(spec.items):
        slots = _slots(spec, item)
        for values in itertools.product(*(opts for _, opts in slots)):
            out.append((index, tuple(zip((s for s, _ in slots), values))))
    return out


def _title(spec: DomainSpec, combo: Combo, rng: random.Random) -> str:
    """A Taobao-style title: noise words around every visible attribute word, 20-40 chars."""
    noise = spec.noise

    def pick(words: Sequence[str]) -> str:  # any noise list may be empty in a custom domain
        return rng.choice(words) if words else ""

    index, attrs = combo
    body = [value for _, value in attrs]
    rng.shuffle(body)
    if rng.random() < 0.6:
        body.insert(rng.randrange(len(body) + 1), pick(noise.fillers))
    body.append(spec.items[index].word)
    # Noise before and after the visible words; trimmed from the ends when a title runs long.
    head: list[str] = []
    if rng.random() < 0.85:
        head.append(pick(noise.shops) + (pick(noise.latin) if rng.random() < 0.25 else ""))
    year = str(rng.randint(2019, 2024)) if rng.random() < 0.6 else ""
    head.append(year + (pick(noise.times) if rng.random() < 0.6 else ""))
    head.extend(rng.sample(noise.promos, rng.randint(min(1, len(noise.promos)), min(3, len(noise.promos)))))
    if rng.random() < 0.2:
        head.insert(rng.randrange(len(head) + 1), pick(noise.latin))
    tail: list[str] = []
    if rng.random() < 0.6:
        tail.append(pick(noise.suffixes))
    if rng.random() < 0.3:
        tail.append(pick(noise.sizes))
    if rng.random() < 0.6:
        tail.append((rng.choice("ABKX") if rng.random() < 0.2 else "") + str(rng.randint(100, 99999)))
    head, tail = [w for w in head if w], [w for w in tail if w]

    def join() -> str:
        return "".join(head + body + tail)

    while len(join()) > 40 and (head or tail):
        (head if head and (not tail or rng.random() < 0.5) else tail).pop()
    while len(join()) < 20:
        unused = [w for w in noise.promos if w not in head]
        head.append(pick(unused) or str(rng.randint(100, 99999)))
    return join()


# --------------------------------------------------------------------------- rendering


def _jitter(c: RGB, rng: random.Random, amount: int) -> RGB:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


_FRAME_COLOURS: tuple[RGB, ...] = ((210, 50, 60), (235, 120, 30), (40, 40, 45), (60, 120, 200), (230, 90, 150))
_DILATE_LUT = [0] * 8 + [255] * 248


def _render(spec: DomainSpec, combo: Combo, image_size: int, rng: random.Random) -> Image.Image:
    """Draw one item: tinted background, outlined and patterned silhouette, details, maybe a frame."""
    index, attr_pairs = combo
    item, attrs = spec.items[index], dict(attr_pairs)
    size = image_size * SUPERSAMPLE
    grey = rng.randint(222, 250)
    bg = _jitter((grey, grey, grey), rng, 8)
    canvas = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(canvas)
    if rng.random() < 0.4:  # a table or floor line: horizontal, so flips keep it
        d.rectangle([0, size * rng.uniform(0.80, 0.9), size, size], fill=_mix(bg, (120, 110, 100), 0.15))

    scale = spec.size_scale.get(attrs.get("size", ""), 1.0) * rng.uniform(0.95, 1.05)
    # Small off-centring and scale jitter, like product photos; item units stay comparable.
    cx = size / 2 + rng.uniform(-0.02, 0.02) * size
    cy = size / 2 + rng.uniform(-0.03, 0.03) * size
    geo = Geo(cx=cx, cy=cy, u=size * 0.42 * scale)
    mask = Image.new("L", (size, size), 0)
    item.shape(ImageDraw.Draw(mask), geo, attrs)

    fill = _jitter(spec.colours[attrs["colour"]], rng, 8)
    pal = _palette(fill, spec.metal)
    # Dilate by blur + threshold: a rank (max) filter would be ten times slower.
    outline = mask.filter(ImageFilter.BoxBlur(2)).point(_DILATE_LUT)
    canvas.paste(_mix(fill, (0, 0, 0), 0.5) if _luma(fill) > 60 else (95, 95, 100), mask=outline)
    canvas.paste(_texture(spec.patterns[attrs["pattern"]], fill, geo, size, rng), mask=mask)
    if item.details is not None:
        item.details(ImageDraw.Draw(canvas), geo, attrs, pal)

    if rng.random() < 0.3:  # shop frame overlay, never text
        band = round(size * rng.uniform(0.02, 0.035))
        d.rectangle([0, 0, size - 1, size - 1], outline=_jitter(rng.choice(_FRAME_COLOURS), rng, 20), width=band)
    return canvas.reduce(SUPERSAMPLE)


# --------------------------------------------------------------------------- writing


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]], delimiter: str = ",") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _check_args(n_train: int, n_queries: int, n_distractors: int, image_size: int) -> None:
    limits = (
        ("n_train", n_train, 0),
        ("n_queries", n_queries, 1),
        ("n_distractors", n_distractors, 0),
        ("image_size", image_size, 32),
    )
    for name, value, low in limits:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _prepare_dir(out: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) earlier output: stray images would join the gallery."""
    image_dir = out / "image"
    old_csvs = [out / name for name in OUTPUT_CSVS if (out / name).exists()]
    old_files = sorted(p for p in image_dir.iterdir()) if image_dir.is_dir() else []
    if (old_csvs or old_files) and not overwrite:
        raise ConfigError(
            f"{out} already holds data ({len(old_csvs)} CSV files, {len(old_files)} files in image/); "
            "every file in image/ not named by train.csv would join the gallery: "
            "pick an empty directory or pass overwrite=True"
        )
    foreign = [p.name for p in old_files if p.suffix != ".jpg" or not p.is_file()]
    if foreign:
        raise ConfigError(
            f"overwrite=True only removes earlier demo files, but {image_dir} also holds "
            f"{', '.join(foreign[:5])}: move them away or pick an empty directory"
        )
    for path in old_csvs + old_files:
        path.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)


def make_demo_data(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 600,
    n_queries: int = 100,
    n_distractors: int = 300,
    image_size: int = 224,
    domain: str | DomainSpec = "clothing",
    overwrite: bool = False,
) -> dict[str, int]:
    """Write a synthetic dataset in the competition layout (``xfdata/``) into ``out_dir``.

    Files written: ``train.csv`` (tab-separated ``title``/``path``), ``test_query.csv``
    (``title``), ``sample_submit.csv`` (``title``/``path``, path empty, query order),
    ``test_answers.csv`` (``query`` = 0-based row in ``test_query.csv``, ``path`` = true
    image) and ``image/<uuid4>.jpg``. The gallery for the queries is every image that
    ``train.csv`` does not name: one distinct target per query plus the distractors. A
    given seed gives byte-identical files.

    Args:
        out_dir: Target directory, created if missing.
        seed: Seed of everything random (names, attributes, titles, jitter, JPEG quality).
        n_train: Number of training pairs (each with its own image).
        n_queries: Number of test queries; each has its own target image whose visible
            attributes differ from every other target's.
        n_distractors: Extra gallery images; half of them differ from some target by
            exactly one visible attribute (hard negatives), none equals a target.
        image_size: Side of the square RGB JPEGs.
        domain: One of :data:`DOMAINS` or a custom :class:`DomainSpec`.
        overwrite: Replace demo files already in ``out_dir`` instead of refusing.

    Returns:
        Counts: ``train``, ``queries``, ``distractors``, ``gallery`` and ``images``.

    Raises:
        ConfigError: A size or the domain is invalid, ``n_queries`` exceeds the number of
            distinct attribute combinations, or ``out_dir`` already has demo data.
    """
    _check_args(n_train, n_queries, n_distractors, image_size)
    spec = get_domain(domain)
    capacity = _n_combos(spec)
    if n_queries > capacity // 2:
        raise ConfigError(
            f"n_queries={n_queries} is too many for domain {spec.name!r}: it has {capacity} distinct "
            f"attribute combinations and distractors need room; use at most {capacity // 2}"
        )
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    rng = random.Random(seed)

    targets, distractors, train = _sample_combos(spec, rng, n_queries, n_distractors, n_train)
    # Draw names, titles and per-image seeds in one fixed order so the output depends on the seed only.
    records = []  # (role, combo, file name, title, image seed)
    for role, combos in (("query", targets), ("distractor", distractors), ("train", train)):
        for combo in combos:
            name = f"{uuid.UUID(int=rng.getrandbits(128), version=4)}.jpg"
            title = _title(spec, combo, rng) if role != "distractor" else ""
            records.append((role, combo, name, title, rng.getrandbits(64)))

    from tqdm.auto import tqdm

    # A bar on a terminal only (disable=None): logs and captured output stay quiet.
    for _, combo, name, _, image_seed in tqdm(records, desc="drawing images", unit="img", disable=None, leave=False):
        image_rng = random.Random(image_seed)
        image = _render(spec, combo, image_size, image_rng)
        with atomic_path(out / "image" / name) as tmp:
            image.save(tmp, format="JPEG", quality=image_rng.randint(*JPEG_QUALITY), optimize=True)

    queries = [r for r in records if r[0] == "query"]
    rng.shuffle(queries)  # the file order of queries must not mirror target generation order
    train_rows = [(r[3], r[2]) for r in records if r[0] == "train"]
    rng.shuffle(train_rows)
    atomic_write_text(out / "train.csv", _csv_text(("title", "path"), train_rows, delimiter="\t"))
    atomic_write_text(out / "test_query.csv", _csv_text(("title",), [(r[3],) for r in queries]))
    atomic_write_text(out / "sample_submit.csv", _csv_text(("title", "path"), [(r[3], "") for r in queries]))
    answers = [(str(i), r[2]) for i, r in enumerate(queries)]
    atomic_write_text(out / "test_answers.csv", _csv_text(("query", "path"), answers))

    counts = {
        "train": len(train_rows),
        "queries": len(queries),
        "distractors": len(distractors),
        "gallery": len(queries) + len(distractors),
        "images": len(records),
    }
    logger.debug("wrote %s demo data to %s: %s", spec.name, out, counts)
    return counts
