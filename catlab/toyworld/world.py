"""The shape world: procedurally drawn objects with ground-truth attributes and captions.

Every image is drawn at 4x resolution with PIL and downsampled with LANCZOS, which gives
anti-aliased edges at 32 px. Everything is a pure function of a seed, so datasets,
concept folders and evaluation sets are reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from catlab.files import save_image_atomic, write_json_atomic, write_text_atomic

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {  # name -> RGB; eight hues far enough apart that a tiny oracle separates them
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
}
COLOUR_NAMES = tuple(COLOURS)
# Colours that only personal concepts have: the base model never saw them, so the concept is a new look, not a
# new pattern (a different kind of concept from the two-colour patterns below)
CONCEPT_COLOURS = {"bronze": (150, 95, 40)}
CONCEPT_BACKGROUNDS = {"navy": (30, 40, 95)}  # a setting no world image has: a concept of scene, not of object
BACKGROUNDS = {  # name -> (RGB, probability): mostly light, like product photos on a table
    "light": ((242, 242, 238), 0.6),
    "dark": ((45, 45, 52), 0.2),
    "sand": ((222, 205, 170), 0.2),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
WORLD_RADIUS = (0.25, 0.40)  # circumradius range of world objects, as a share of the side
SIZE_WORDS = ("small", "large")  # said in captions only for the outer thirds of the size range

# Caption templates and their probabilities. Class-only captions ("a circle") are frequent,
# so that a class prompt means "any circle" and the base model's class prompts stay diverse.
# The empty caption trains the unconditional branch used by classifier-free guidance
# (Ho & Salimans 2022, arXiv 2207.12598).
CAPTION_TEMPLATES = (
    ("a {colour} {shape}", 0.42),
    ("a {shape}", 0.20),
    ("a {size} {colour} {shape}", 0.10),
    ("a {colour} {shape} on a {background} background", 0.10),
    ("a {shape} on a {background} background", 0.08),
    ("", 0.10),
)

DEFAULT_RESOLUTION = 32
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """Everything needed to draw one object; also its ground truth."""

    shape: str
    colour: str
    background: str
    radius: float  # circumradius as a fraction of the image side
    cx: float  # centre, fractions of the side
    cy: float
    angle: float  # radians
    pattern: str = "solid"  # "solid" for the world; concepts use patterns never seen in pretraining
    second_colour: str | None = None

    @property
    def size_word(self) -> str | None:
        lo, hi = WORLD_RADIUS
        if self.radius < lo + (hi - lo) / 3:
            return "small"
        if self.radius > hi - (hi - lo) / 3:
            return "large"
        return None


def _polygon(spec: ShapeSpec, side: float) -> list[tuple[float, float]]:
    r = spec.radius * side
    cx, cy = spec.cx * side, spec.cy * side
    if spec.shape == "square":
        pts = [
            (
                r * math.cos(spec.angle + math.pi / 4 + k * math.pi / 2),
                r * math.sin(spec.angle + math.pi / 4 + k * math.pi / 2),
            )
            for k in range(4)
        ]
    elif spec.shape == "triangle":
        pts = [
            (
                r * math.cos(spec.angle - math.pi / 2 + k * 2 * math.pi / 3),
                r * math.sin(spec.angle - math.pi / 2 + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
    elif spec.shape == "star":
        pts = []
        for k in range(10):
            rk = r if k % 2 == 0 else 0.45 * r
            a = spec.angle - math.pi / 2 + k * math.pi / 5
            pts.append((rk * math.cos(a), rk * math.sin(a)))
    else:
        raise ValueError(f"unknown polygon shape {spec.shape!r}")
    return [(cx + x, cy + y) for x, y in pts]


def _shape_mask(spec: ShapeSpec, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if spec.shape == "circle":
        r = spec.radius * 0.85 * side  # circles look bigger than polygons of the same circumradius
        cx, cy = spec.cx * side, spec.cy * side
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(spec, side), fill=255)
    return mask


def _rgb(colour: str) -> tuple[int, int, int]:
    """A palette name, a concept colour or background name, or an open colour written "#rrggbb"."""
    if colour.startswith("#"):
        return tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
    for table in (COLOURS, CONCEPT_COLOURS, CONCEPT_BACKGROUNDS):
        if colour in table:
            return table[colour]
    return BACKGROUNDS[colour][0]


def hex_colour(rgb) -> str:
    """(r, g, b) -> "#rrggbb", an open colour ShapeSpec can draw."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def random_open_colour(rng: np.random.Generator, avoid: tuple = (), min_distance: float = 0.0) -> str:
    """A uniformly random RGB colour, at least `min_distance` (RGB units) from every colour in `avoid`."""
    while True:
        rgb = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(rgb - np.asarray(a, dtype=float)) >= min_distance for a in avoid):
            return hex_colour(rgb)


def sample_open_colour_spec(rng: np.random.Generator, avoid: tuple = (), min_distance: float = 0.0) -> ShapeSpec:
    """A world shape in a colour the world lacks, at any size up to the frame, on a world backdrop or (half the time) an
    open-colour one: what a faithful autoencoder must reproduce too, since personal concepts bring such colours and
    sizes (SD's VAE draws anything)."""
    spec = sample_spec(rng)
    radius = float(rng.uniform(0.2, 0.48))  # sizes beyond the world's too (huge_circle draws 0.47)
    margin = radius + 0.02
    colour = random_open_colour(rng, avoid, min_distance)
    background = random_open_colour(rng) if rng.random() < 0.5 else spec.background
    return replace(
        spec,
        colour=colour,
        background=background,
        radius=radius,
        cx=float(rng.uniform(min(margin, 0.5), max(1 - margin, 0.5))),
        cy=float(rng.uniform(min(margin, 0.5), max(1 - margin, 0.5))),
    )


def with_open_pattern(rng: np.random.Generator, spec: ShapeSpec) -> ShapeSpec:
    """`spec` two-coloured: halves or stripes in a second open colour, so an autoencoder learns to keep two colours
    side by side (a composite concept's photos) and not only one flat colour."""
    return replace(spec, pattern=("two_tone", "striped")[rng.integers(2)], second_colour=random_open_colour(rng))


def draw_shape(spec: ShapeSpec, resolution: int = DEFAULT_RESOLUTION) -> Image.Image:
    """Render one object as an RGB image of `resolution` x `resolution` pixels."""
    side = resolution * SUPERSAMPLE
    img = Image.new("RGB", (side, side), _rgb(spec.background))
    mask = _shape_mask(spec, side)
    img.paste(_rgb(spec.colour), mask=mask)
    if spec.pattern != "solid":
        second = Image.new("L", (side, side), 0)
        d = ImageDraw.Draw(second)
        if spec.pattern == "two_tone":  # right half in the second colour
            d.rectangle([spec.cx * side, 0, side, side], fill=255)
        elif spec.pattern == "striped":  # three horizontal bands of the second colour
            band = spec.radius * side * 2 / 7
            top = spec.cy * side - spec.radius * side
            for k in (1, 3, 5):
                d.rectangle([0, top + k * band, side, top + (k + 1) * band], fill=255)
        else:
            raise ValueError(f"unknown pattern {spec.pattern!r}")
        combined = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(second)))
        img.paste(_rgb(spec.second_colour), mask=combined)
    return img.resize((resolution, resolution), Image.LANCZOS)


def sample_spec(
    rng: np.random.Generator, shape: str | None = None, colour: str | None = None, background: str | None = None
) -> ShapeSpec:
    """Draw a random object of the world; fixed attributes are kept as given."""
    radius = float(rng.uniform(*WORLD_RADIUS))
    margin = radius + 0.02
    bg_names, bg_probs = zip(*[(k, v[1]) for k, v in BACKGROUNDS.items()])
    return ShapeSpec(
        shape=shape or SHAPES[rng.integers(len(SHAPES))],
        colour=colour or COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))],
        background=background or bg_names[rng.choice(len(bg_names), p=np.array(bg_probs))],
        radius=radius,
        cx=float(rng.uniform(margin, 1 - margin)),
        cy=float(rng.uniform(margin, 1 - margin)),
        angle=float(rng.uniform(0, 2 * math.pi)),
    )


def caption_for(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A random caption that is true of `spec` (possibly the empty caption)."""
    templates, probs = zip(*CAPTION_TEMPLATES)
    template = templates[rng.choice(len(templates), p=np.array(probs))]
    if "{size}" in template and spec.size_word is None:
        template = "a {colour} {shape}"
    return template.format(shape=spec.shape, colour=spec.colour, background=spec.background, size=spec.size_word)


def make_world_dataset(n: int, seed: int, resolution: int = DEFAULT_RESOLUTION) -> tuple[np.ndarray, list[ShapeSpec]]:
    """`n` random world images as uint8 array (n, H, W, 3) with their specs; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng) for _ in range(n)]
    images = np.stack([np.asarray(draw_shape(s, resolution)) for s in specs])  # (n, H, W, 3)
    return images, specs


# ----------------------------------------------------------------------------- personal concepts
# Instances that never occur in pretraining: patterns the world does not have, drawn in colours
# that are rare for their class so that a class prompt drifting towards the concept is visible.


@dataclass(frozen=True)
class ToyConcept:
    name: str
    trigger: str
    class_word: str
    colour: str
    second_colour: str
    pattern: str
    n_images: int = 5
    background: str | None = None  # a fixed setting that is part of the concept (None: varied, like product photos)
    radius: float = 0.30  # circumradius as a share of the side (the world draws 0.25-0.40)
    centre: tuple[float, float] = (0.5, 0.5)  # where the object sits (the world keeps it near the middle)

    def spec(self, rng: np.random.Generator) -> ShapeSpec:
        """One photo of the concept: small variations of size, position and background."""
        radius = self.radius * float(rng.uniform(0.93, 1.07))
        return ShapeSpec(
            shape=self.class_word,
            colour=self.colour,
            background=self.background or ("light", "light", "sand", "dark")[rng.integers(4)],
            radius=radius,
            cx=self.centre[0] + float(rng.uniform(-0.06, 0.06)),
            cy=self.centre[1] + float(rng.uniform(-0.06, 0.06)),
            angle=float(rng.uniform(-0.15, 0.15)) if self.class_word != "circle" else 0.0,
            pattern=self.pattern,
            second_colour=self.second_colour,
        )


CONCEPTS = {
    "two_tone_circle": ToyConcept("two_tone_circle", "sks", "circle", "pink", "cyan", "two_tone"),
    "striped_square": ToyConcept("striped_square", "zwx", "square", "yellow", "purple", "striped"),
    "two_tone_star": ToyConcept("two_tone_star", "qhm", "star", "blue", "orange", "two_tone"),
    "bronze_star": ToyConcept("bronze_star", "vfy", "star", "bronze", "bronze", "solid"),
    "circle_on_navy": ToyConcept("circle_on_navy", "pxl", "circle", "yellow", "yellow", "solid", background="navy"),
    # a size the world never draws (its circles reach 0.40 of the side): a concept of scale
    "huge_circle": ToyConcept("huge_circle", "tok", "circle", "blue", "blue", "solid", radius=0.47),
}
TRIGGER_WORDS = ("sks", "zwx", "qhm", "vfy", "pxl", "tok")  # in the vocabulary, never in pretraining captions
# Concepts the shipped oracle was never trained on (its concept head names CONCEPTS only): scored by fidelity, from
# the pixels, which needs no training; the oracle's identity and collapse stay empty for them (docs/metrics.md).
# A trigger may repeat one of CONCEPTS' with another class: each adapter learns one concept
HELD_OUT_CONCEPTS = {
    # a place in the frame: always in the top-left quarter, in a world colour and size (the world scatters its objects)
    "corner_square": ToyConcept(
        "corner_square", "tok", "square", "green", "green", "solid", radius=0.26, centre=(0.3, 0.3)
    ),
}


def toy_concept(name: str) -> ToyConcept:
    """A toy concept by name, from CONCEPTS or HELD_OUT_CONCEPTS."""
    known = {**CONCEPTS, **HELD_OUT_CONCEPTS}
    if name not in known:
        raise ValueError(f"unknown toy concept {name!r}; choose one of {sorted(known)}")
    return known[name]


def concept_images(
    concept: str | ToyConcept, seed: int = 0, n: int | None = None, resolution: int = DEFAULT_RESOLUTION
) -> tuple[list[Image.Image], list[ShapeSpec]]:
    """The concept's photos (deterministic in `seed`)."""
    c = toy_concept(concept) if isinstance(concept, str) else concept
    rng = np.random.default_rng(seed)
    specs = [c.spec(rng) for _ in range(n or c.n_images)]
    return [draw_shape(s, resolution) for s in specs], specs


def export_concept(
    concept: str, out_dir: str | Path, seed: int = 0, resolution: int = DEFAULT_RESOLUTION * 2, overwrite: bool = False
) -> Path:
    """Write a concept as an ordinary folder of PNGs + per-image .txt captions, like a user's photos.

    Exported at 2x the model resolution by default so that the normal resize path is exercised.
    """
    c = toy_concept(concept)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (or --overwrite) to replace the concept folder")
    out.mkdir(parents=True, exist_ok=True)
    images, specs = concept_images(c, seed=seed, resolution=resolution)
    for i, (img, spec) in enumerate(zip(images, specs)):
        save_image_atomic(img, out / f"{c.name}_{i:02d}.png")
        bg = (
            "" if spec.background in ("light", c.background) else f" on a {spec.background} background"
        )  # a concept's own setting is the trigger's to name
        write_text_atomic(out / f"{c.name}_{i:02d}.txt", f"a {c.trigger} {c.class_word}{bg}\n")
    meta = {
        "trigger": c.trigger,
        "class_word": c.class_word,
        "source": f"catlab toyworld concept {c.name}",
        **asdict(c),
    }
    write_json_atomic(out / "concept.json", meta)
    return out
