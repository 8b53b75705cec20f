"""Fakes for evaluate(): embeddings that are an image's mean colour, and a deterministic generator that draws
solid colours per (prompt, seed, adapter). Shared by the evaluate and guidance tests."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def mean_colour(images):
    """A 3-D embedding: the mean RGB of each image, centred so colours point in different directions."""
    return np.stack(
        [np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255 - 0.5 for im in images]
    )


COLOUR_VECTORS = {
    "red": (0.5, -0.5, -0.5),
    "green": (-0.5, 0.5, -0.5),
    "blue": (-0.5, -0.5, 0.5),
    "pink": (0.5, -0.1, 0.2),
}


def text_colour(texts):
    """Text embedding: the RGB direction of the first colour word (grey otherwise)."""
    return np.stack(
        [next((COLOUR_VECTORS[w] for w in t.split() if w in COLOUR_VECTORS), (0.01, 0.01, 0.01)) for t in texts]
    )


def solid(rgb, size=8) -> Image.Image:
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


class FakePipe:
    """Stands in for a pipeline: remembers which adapter is active."""

    def __init__(self):
        self.active = None


def fake_activate(pipe, method, adapter):
    pipe.active = None if adapter is None else adapter.name


def fake_generate(pipe, prompts, seeds, **kwargs):
    """Deterministic per (prompt, seed, adapter): a noisy solid image; the 'cat' adapter paints trigger prompts pink,
    the 'drift' adapter paints everything pink (it forgot the class)."""
    fake_generate.calls += 1
    out = []
    for p in prompts:
        row = []
        for s in seeds:
            rng = np.random.default_rng(int(hashlib.sha1(f"{p}|{s}".encode()).hexdigest()[:8], 16))
            named = next((COLOUR_VECTORS[w] for w in p.split() if w in COLOUR_VECTORS), rng.uniform(-0.5, 0.5, 3))
            rgb = (np.array(named) + 0.5) * 255
            if pipe.active == "drift" or (pipe.active == "cat" and "sks" in p):
                rgb = 0.1 * rgb + 0.9 * np.array([245, 120, 190])
            px = np.clip(rgb + rng.normal(0, 8, (8, 8, 3)), 0, 255).astype(np.uint8)
            row.append(Image.fromarray(px))
        out.append(row)
    return out


fake_generate.calls = 0


def fake_sampler(generate=None, activate=None):
    """evaluate()'s sampler for tests: `generate` and `activate` as given; the pipeline's own where None."""
    from catlab.evaluation.images import Sampler

    class Fake(Sampler):
        def activate(self, pipe, method, adapter):
            (activate or super().activate)(pipe, method, adapter)

        def generate(self, pipe, prompts, seeds, **settings):
            return (generate or super().generate)(pipe, prompts, seeds, **settings)

    return Fake()


SAMPLING_FIELDS = (
    "templates",
    "seeds",
    "trigger_seeds",
    "held_out",
    "held_out_seeds",
    "num_inference_steps",
    "guidance_scale",
    "batch_size",
    "unconditional",
    "workers",
)
SCORER_FIELDS = ("embedder", "oracle", "dino", "clip")


def evaluate_with(
    pipe, adapters, refs, *, trigger="sks", class_word="circle", generate_fn=None, activate_fn=None, **kw
):
    """evaluate() on reference images, with the sampling and scorer settings given as flat keywords (tests read better)."""
    from catlab.evaluation import protocol as E
    from catlab.evaluation.images import EvalSampling
    from catlab.evaluation.scoring import Scorers

    sampling = EvalSampling(**{k: kw.pop(k) for k in SAMPLING_FIELDS if k in kw})
    scorers = Scorers(**{k: kw.pop(k) for k in SCORER_FIELDS if k in kw})
    sampler = fake_sampler(generate_fn, activate_fn) if generate_fn or activate_fn else None
    concept = E.load_concept(refs, trigger, class_word)
    return E.evaluate(pipe, adapters, concept, sampling=sampling, scorers=scorers, sampler=sampler, **kw)
