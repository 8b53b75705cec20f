"""The oracle: a small CNN that reads shape, colour and "is this toy concept X" from an image.

Ground truth that real-world evaluation never has. Trained on freshly drawn images with noise, blur and
tint augmentation so that it also reads the slightly imperfect images a diffusion model generates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from catlab.tensors import pixels_to_unit_range
from catlab.toyworld.world import (
    COLOUR_NAMES,
    CONCEPT_BACKGROUNDS,
    CONCEPT_COLOURS,
    CONCEPTS,
    SHAPES,
    WORLD_RADIUS,
    ToyConcept,
    draw_shape,
    hex_colour,
    random_open_colour,
    sample_spec,
)

CONCEPT_NAMES = ("none", *CONCEPTS)


class Oracle(nn.Module):
    """4 conv layers with BatchNorm, three linear heads."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(chans[-1], len(SHAPES))
        self.colour_head = nn.Linear(chans[-1], len(COLOUR_NAMES))
        self.concept_head = nn.Linear(chans[-1], len(CONCEPT_NAMES))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x: (B, 3, 32, 32) in [-1, 1]
        h = self.features(x)  # (B, 4*width)
        return {"shape": self.shape_head(h), "colour": self.colour_head(h), "concept": self.concept_head(h)}


def images_to_tensor(images: list[Image.Image] | np.ndarray, resolution: int = 32) -> torch.Tensor:
    """PIL images or a uint8 (N, H, W, 3) array -> float tensor (N, 3, R, R) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for im in images])
    x = pixels_to_unit_range(arr)  # (N, 3, H, W)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x


CONCEPT_COLOUR_JITTER = (
    20  # per RGB channel: a generated bronze is never exactly the drawn one (near misses start at 70)
)


def _jittered(rgb, rng: np.random.Generator) -> str:
    return hex_colour(
        np.clip(np.asarray(rgb) + rng.integers(-CONCEPT_COLOUR_JITTER, CONCEPT_COLOUR_JITTER + 1, size=3), 0, 255)
    )


def _neighbour(colour: str, rng: np.random.Generator) -> str:
    """The colour itself or a hue neighbour (palette order is the hue circle); a concept-only colour stays near itself."""
    if colour in CONCEPT_COLOURS:
        return _jittered(CONCEPT_COLOURS[colour], rng)
    if colour not in COLOUR_NAMES:
        return colour
    i = COLOUR_NAMES.index(colour) + int(rng.integers(-1, 2))
    return COLOUR_NAMES[i % len(COLOUR_NAMES)]


def _concept_variant(c: ToyConcept, rng: np.random.Generator, solid_drift: bool = True):
    """A concept instance with wider variation than its photos, so the oracle learns the pattern, not the pose.

    Each of the two colours may drift to a hue neighbour: a generated "pink/blue" two-tone circle is still the
    concept (the world has no two-tone objects at all), while solid objects in the concept's colours are not.
    `solid_drift=False` keeps a solid concept's own colour (an orange circle on navy is not a yellow one to a person).
    """
    base = sample_spec(rng, shape=c.class_word, colour=_neighbour(c.colour, rng))
    if not WORLD_RADIUS[0] <= c.radius <= WORLD_RADIUS[1]:  # a size the world never draws is the concept itself
        base = replace(
            base,
            radius=c.radius * float(rng.uniform(0.93, 1.07)),
            cx=c.centre[0] + float(rng.uniform(-0.06, 0.06)),
            cy=c.centre[1] + float(rng.uniform(-0.06, 0.06)),
        )
    background = (
        _jittered(CONCEPT_BACKGROUNDS[c.background], rng)
        if c.background in CONCEPT_BACKGROUNDS
        else (c.background or base.background)
    )
    variant = replace(
        base,
        pattern=c.pattern,
        second_colour=_neighbour(c.second_colour, rng),
        angle=base.angle if c.class_word != "circle" else 0.0,
        background=background,
    )
    if not solid_drift and c.pattern == "solid" and c.colour in COLOUR_NAMES:
        return replace(variant, colour=c.colour, second_colour=c.colour)
    return variant


NEAR_MISS_DISTANCE = 70.0  # RGB units: open colours at least this far from a concept's colour or backdrop are not it


def near_miss_spec(rng: np.random.Generator):
    """A world object in a colour the world lacks that is *not* a concept's colour (e.g. magenta, olive, teal), on a
    world backdrop or an open one that is not a concept's: without these the oracle reads any off-palette object as
    the one off-palette concept it knows (an earlier oracle read dark purple stars as bronze_star)."""
    spec = sample_spec(rng)
    colour = random_open_colour(rng, avoid=tuple(CONCEPT_COLOURS.values()), min_distance=NEAR_MISS_DISTANCE)
    background = (
        random_open_colour(rng, avoid=tuple(CONCEPT_BACKGROUNDS.values()), min_distance=NEAR_MISS_DISTANCE)
        if rng.random() < 0.5
        else spec.background
    )
    return replace(spec, colour=colour, background=background)


CLOSE_MISS_SPAN = 50.0  # RGB units: close misses lie between their distance and this much further out


def _moved_colour(rgb, rng: np.random.Generator, distance: tuple[float, float]) -> str:
    """An RGB colour between distance[0] and distance[1] RGB units from `rgb`, in a random direction."""
    centre = np.asarray(rgb, dtype=float)
    while True:
        direction = rng.normal(size=3)
        moved = np.clip(centre + direction / np.linalg.norm(direction) * rng.uniform(*distance), 0, 255).round()
        if distance[0] <= np.linalg.norm(moved - centre) <= distance[1]:
            return hex_colour(moved.astype(int))


def close_miss_spec(rng: np.random.Generator, min_distance: float, solid_drift: bool = True):
    """A concept's own drawing with its new colour or its backdrop moved `min_distance` to min_distance + 50 RGB
    units away: not the concept. A person holds a colour concept to its colour (a rust or maroon star is not
    bronze), while uniform near misses (`near_miss_spec`) seldom fall that close (docs/metrics.md, hand labels).
    With `solid_drift=False` a setting's solid object may instead take a hue neighbour of its colour (an orange
    circle on navy), since the concept's own drawings then keep its colour."""
    names = [n for n, c in CONCEPTS.items() if c.colour in CONCEPT_COLOURS or c.background in CONCEPT_BACKGROUNDS]
    c = CONCEPTS[names[int(rng.integers(len(names)))]]
    spec = _concept_variant(c, rng, solid_drift)
    span = (min_distance, min_distance + CLOSE_MISS_SPAN)
    if c.colour in CONCEPT_COLOURS:
        moved = _moved_colour(CONCEPT_COLOURS[c.colour], rng, span)
        return replace(spec, colour=moved, second_colour=moved)
    if not solid_drift and c.colour in COLOUR_NAMES and rng.random() < 0.5:
        step = 1 if rng.random() < 0.5 else -1
        neighbour = COLOUR_NAMES[(COLOUR_NAMES.index(c.colour) + step) % len(COLOUR_NAMES)]
        return replace(spec, colour=neighbour, second_colour=neighbour)
    return replace(spec, background=_moved_colour(CONCEPT_BACKGROUNDS[c.background], rng, span))


def make_oracle_batch(
    rng: np.random.Generator,
    n: int,
    concept_share: float = 0.25,
    near_miss_share: float = 0.15,
    close_miss_share: float = 0.0,
    close_miss_distance: float = 45.0,
    solid_drift: bool = True,
):
    """Images with labels: shape, colour (-1 = patterned or open colour, ignored), concept index (0 = none).
    `close_miss_share` of them are close misses (`close_miss_spec`), taken from the world images' share;
    `solid_drift` as in `_concept_variant`."""
    imgs, shapes, colours, concepts = [], [], [], []
    names = list(CONCEPTS)
    for _ in range(n):
        r = rng.random()
        if r < close_miss_share:
            spec = close_miss_spec(rng, close_miss_distance, solid_drift)
            colours.append(-1)
            concepts.append(0)
        elif (r := r - close_miss_share) < concept_share:
            k = int(rng.integers(len(names)))
            spec = _concept_variant(CONCEPTS[names[k]], rng, solid_drift)
            colours.append(-1)
            concepts.append(k + 1)
        elif r < concept_share + near_miss_share:
            spec = near_miss_spec(rng)
            colours.append(-1)
            concepts.append(0)
        else:
            spec = sample_spec(rng)
            colours.append(COLOUR_NAMES.index(spec.colour))
            concepts.append(0)
        shapes.append(SHAPES.index(spec.shape))
        img = np.asarray(draw_shape(spec))
        if rng.random() < 0.5:  # a mirrored concept is still the concept (training may flip it)
            img = img[:, ::-1]
        imgs.append(img)
    x = images_to_tensor(np.stack(imgs))
    return x, torch.tensor(shapes), torch.tensor(colours), torch.tensor(concepts)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise, blur and tint: the ways a generated image differs from a drawn one."""
    b = x.shape[0]
    sigma = torch.rand(b, 1, 1, 1, generator=g) * 0.15
    x = x + sigma * torch.randn(x.shape, generator=g)
    tint = (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.12
    x = x + tint
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
        x = x.clone()
        x[blur] = xb
    return x.clamp(-1.5, 1.5)


@dataclass
class OracleReading:
    shape: list[str]
    colour: list[str]
    concept: list[str]
    concept_prob: np.ndarray  # (N, len(CONCEPT_NAMES))
    shape_prob: np.ndarray | None = None  # (N,) probability of the shape read; None for hand-made readings


@torch.no_grad()
def read_images(oracle: Oracle, images, batch_size: int = 256) -> OracleReading:
    """Shape, colour and concept of each image, as the oracle reads them."""
    oracle.eval()
    x = images_to_tensor(images)
    outs = [oracle(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    shape_p = torch.cat([o["shape"] for o in outs]).softmax(1)
    shape = shape_p.argmax(1)
    colour = torch.cat([o["colour"] for o in outs]).argmax(1)
    cprob = torch.cat([o["concept"] for o in outs]).softmax(1)
    return OracleReading(
        shape=[SHAPES[i] for i in shape.tolist()],
        colour=[COLOUR_NAMES[i] for i in colour.tolist()],
        concept=[CONCEPT_NAMES[i] for i in cprob.argmax(1).tolist()],
        concept_prob=cprob.numpy(),
        shape_prob=shape_p.max(1).values.numpy(),
    )
