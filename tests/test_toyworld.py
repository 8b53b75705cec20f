"""The toy world: deterministic generator, genuine diffusers pipeline, shipped weights, clear asset errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from catlab.toyworld import build
from catlab.toyworld.assets import ASSET_DIR, ToyWorldAssetError, load_oracle, toyworld_path
from catlab.toyworld.oracle import read_images
from catlab.toyworld.pretrain import _truth_matrix
from catlab.toyworld.world import (
    CAPTION_TEMPLATES,
    COLOUR_NAMES,
    CONCEPTS,
    SHAPES,
    TRIGGER_WORDS,
    caption_for,
    concept_images,
    draw_shape,
    make_world_dataset,
    sample_spec,
)


def test_generator_is_deterministic_and_diverse():
    a, specs_a = make_world_dataset(64, seed=3)
    b, specs_b = make_world_dataset(64, seed=3)
    c, _ = make_world_dataset(64, seed=4)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and specs_a == specs_b
    assert not np.array_equal(a, c)
    _, many = make_world_dataset(400, seed=0)
    assert {s.shape for s in many} == set(SHAPES)
    assert {s.colour for s in many} == set(COLOUR_NAMES) and len(COLOUR_NAMES) >= 8
    assert len({s.background for s in many}) >= 3
    assert np.std([s.radius for s in many]) > 0.02 and np.std([s.cx for s in many]) > 0.05


def test_captions_are_true_and_never_use_triggers():
    rng = np.random.default_rng(0)
    _, specs = make_world_dataset(300, seed=1)
    caps = [caption_for(s, rng) for s in specs]
    words = {w for c in caps for w in c.split()}
    assert not words & set(TRIGGER_WORDS), "trigger tokens must never appear in pretraining captions"
    class_only = sum(c in {f"a {s}" for s in SHAPES} for c in caps) / len(caps)
    assert class_only > 0.1, "class-only captions must be common so 'a circle' means any circle"
    truth = _truth_matrix(caps, [asdict(s) for s in specs])
    assert torch.all(torch.diagonal(truth) == 1), "every caption must be true of its own image"
    assert abs(sum(p for _, p in CAPTION_TEMPLATES) - 1) < 1e-9


def test_trigger_words_are_single_known_tokens():
    tok = build.build_tokenizer()
    for w in TRIGGER_WORDS:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id
    assert tok.eos_token_id != 2, "CLIPTextModel treats eos_token_id == 2 as legacy argmax pooling"


def test_concepts_never_occur_in_the_world():
    """Every concept has a pattern, a colour, a setting or a size that no world image has."""
    from catlab.toyworld.world import WORLD_RADIUS

    def look(s):
        return s.shape, s.colour, s.pattern, s.background, WORLD_RADIUS[0] <= s.radius <= WORLD_RADIUS[1]

    _, world = make_world_dataset(2000, seed=0)
    world_looks = {look(s) for s in world}
    assert all(s.pattern == "solid" for s in world) and all(look(s)[-1] for s in world)
    for name, c in CONCEPTS.items():
        imgs, specs = concept_images(name, seed=0)
        assert len(imgs) == c.n_images
        assert all(look(s) not in world_looks for s in specs), name


def test_pipeline_round_trips_through_save_pretrained(tiny_assets, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_assets / "pipeline", safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)

    def sample(p):
        g = [torch.Generator().manual_seed(s) for s in (0, 1)]
        return p(
            ["a red circle", "a star"], generator=g, num_inference_steps=3, guidance_scale=1.5, output_type="np"
        ).images

    before = sample(pipe)
    pipe.save_pretrained(tmp_path / "copy")
    again = StableDiffusionPipeline.from_pretrained(
        tmp_path / "copy", safety_checker=None, requires_safety_checker=False
    )
    again.set_progress_bar_config(disable=True)
    assert before.shape == (2, 32, 32, 3)
    assert np.array_equal(before, sample(again))
    assert type(again.text_encoder).__name__ == "CLIPTextModel" and again.vae.config.latent_channels == 4


def test_short_recipe_writes_a_complete_asset_folder(tiny_assets):
    for part in ("pipeline", "clip", "oracle"):
        assert toyworld_path(part, root=tiny_assets).exists()
    assert (tiny_assets / "recipe.json").exists()


def test_missing_or_corrupt_assets_name_the_file_and_the_fix(tiny_assets, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_assets, broken, ignore=shutil.ignore_patterns("_work"))
    (broken / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        ToyWorldAssetError, match=r"unet/diffusion_pytorch_model\.safetensors.*catlab toyworld pretrain"
    ):
        toyworld_path("pipeline", root=broken)
    (broken / "oracle.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ToyWorldAssetError, match=r"oracle\.safetensors is corrupted.*catlab toyworld pretrain"):
        load_oracle(broken)


# ---------------------------------------------------------------- the shipped weights (what users and CI load)


def test_shipped_weights_fit_the_v2_layout_exactly_and_are_small():
    """Every shipped tensor fits the models the builders make (strict loads: no missing, extra or reshaped weight),
    so the shipped UNet is the v2 layout with cross-attention at 8x8 and 4x4; and the assets stay within budget."""
    from safetensors.torch import load_file

    from catlab.toyworld import build
    from catlab.toyworld.oracle import Oracle

    total = sum(f.stat().st_size for f in ASSET_DIR.rglob("*") if f.is_file())
    assert total <= 25 * 2**20, f"shipped toy world is {total / 2**20:.1f} MB; the budget is 25 MB"
    pipeline = toyworld_path("pipeline", root=ASSET_DIR)
    unet = build.build_unet()
    unet.load_state_dict(load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
    cross = [name for name, m in unet.named_modules() if name.endswith("attn2")]
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in cross} == {
        "down_blocks.1",
        "down_blocks.2",
        "mid_block.attentions",
        "up_blocks.0",
        "up_blocks.1",
    }  # 8x8 and 4x4
    # the weights' shapes do not depend on the heads, so compare them: 32 channels per head, as the builder makes
    shipped_heads = json.loads((pipeline / "unet" / "config.json").read_text())["attention_head_dim"]
    assert list(shipped_heads) == list(unet.config.attention_head_dim) == [1, 2, 4]
    assert {m.heads for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))} == {
        2,
        4,
    }  # 64 and 128 channels
    build.build_vae().load_state_dict(load_file(pipeline / "vae" / "diffusion_pytorch_model.safetensors"), strict=True)
    Oracle().load_state_dict(load_file(toyworld_path("oracle", root=ASSET_DIR)), strict=True)


def test_shipped_pipeline_loads_offline_and_follows_prompts(monkeypatch):
    from catlab.models import load_base
    from catlab.sampling.sampler import generate

    monkeypatch.delenv("CATLAB_TOYWORLD_DIR", raising=False)
    pipe = load_base("toyworld")
    images = generate(pipe, ["a red circle", "a blue square"], list(range(4)), progress=False)
    reading = read_images(load_oracle(), [im for row in images for im in row])
    expected = ["circle"] * 4 + ["square"] * 4
    shape_acc = np.mean([r == e for r, e in zip(reading.shape, expected)])
    assert shape_acc >= 0.75, (
        f"shipped model draws the wrong shapes: {reading.shape}"
    )  # 8 samples: a smoke check, the bar is benchmarks/toyworld_quality.py


def test_shipped_oracle_reads_drawn_images():
    imgs, specs = make_world_dataset(200, seed=12345)
    r = read_images(load_oracle(ASSET_DIR), imgs)
    assert np.mean([a == s.shape for a, s in zip(r.shape, specs)]) >= 0.95
    assert np.mean([a == s.colour for a, s in zip(r.colour, specs)]) >= 0.95
    assert np.mean([c == "none" for c in r.concept]) >= 0.95
    for name in CONCEPTS:
        cimgs, _ = concept_images(name, seed=99, n=10)
        assert np.mean([c == name for c in read_images(load_oracle(ASSET_DIR), cimgs).concept]) >= 0.9


def test_shipped_oracle_reads_near_misses_as_no_concept():
    """Off-palette objects that are not a concept's colour (magenta, olive, teal...) are not the concept: an oracle
    without near misses read dark purple stars as bronze_star."""
    from catlab.toyworld.oracle import near_miss_spec
    from catlab.toyworld.world import draw_shape

    rng = np.random.default_rng(7)
    reading = read_images(load_oracle(ASSET_DIR), [draw_shape(near_miss_spec(rng)) for _ in range(100)])
    assert np.mean([c == "none" for c in reading.concept]) >= 0.95


@pytest.mark.parametrize("name", ["bronze_star", "circle_on_navy", "huge_circle"])
def test_demo_concepts_survive_the_shipped_autoencoder(name, monkeypatch):
    """An adapter draws latents: a concept the autoencoder cannot round-trip cannot be learnt by any method (the v2
    autoencoder turned bronze into crimson and navy into grey). Each demo concept must read as itself after
    encode -> decode."""
    from catlab.models import load_base
    from catlab.toyworld.open_colours import round_trip
    from catlab.toyworld.oracle import images_to_tensor

    monkeypatch.delenv("CATLAB_TOYWORLD_DIR", raising=False)
    vae = load_base("toyworld").vae.eval()
    photos, _ = concept_images(name, seed=99, n=10)
    y = round_trip(vae, images_to_tensor(photos))  # (10, 3, 32, 32)
    trip = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.mean([c == name for c in read_images(load_oracle(ASSET_DIR), trip).concept]) >= 0.9


def test_one_stage_rebuild_keeps_the_rest_and_records_what_was_redone(tiny_assets, tmp_path):
    """`catlab toyworld pretrain --stages oracle`: after adding a concept, only the oracle is retrained."""
    import json
    import shutil

    from catlab.toyworld.pretrain import PretrainConfig, pretrain

    out = tmp_path / "assets"
    shutil.copytree(tiny_assets, out, ignore=shutil.ignore_patterns("_work"))
    unet_file = out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    before_unet, before_oracle = unet_file.read_bytes(), (out / "oracle.safetensors").read_bytes()
    cfg = PretrainConfig.tiny()
    cfg.stages, cfg.seed = ("oracle",), 1
    pretrain(out, cfg, work_dir=tmp_path / "work")
    assert unet_file.read_bytes() == before_unet
    assert (out / "oracle.safetensors").read_bytes() != before_oracle
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["config"]["stages"] == list(PretrainConfig.stages)  # how the rest was made
    assert [u["stages"] for u in recipe["updates"]] == [["oracle"]]
    assert not (tmp_path / "work" / "vae_final").exists(), "an oracle-only rebuild needs no VAE"


def test_open_colours_draw_exactly_and_keep_clear_of_what_they_avoid():
    from catlab.toyworld.world import hex_colour, random_open_colour, sample_open_colour_spec

    spec = replace(
        sample_spec(np.random.default_rng(0), shape="square"),
        colour="#0a141e",
        background="#fafafa",
        radius=0.35,
        angle=0.0,
    )
    img = np.asarray(draw_shape(spec))
    assert tuple(img[16, 16]) == (10, 20, 30) and tuple(img[0, 0]) == (250, 250, 250)
    assert hex_colour((150, 95, 40)) == "#965f28"
    rng = np.random.default_rng(1)
    far = [random_open_colour(rng, avoid=((150, 95, 40),), min_distance=70) for _ in range(200)]
    assert min(np.linalg.norm(np.array([int(c[k : k + 2], 16) for k in (1, 3, 5)]) - (150, 95, 40)) for c in far) >= 70
    specs = [sample_open_colour_spec(rng) for _ in range(50)]
    assert (
        all(s.colour.startswith("#") for s in specs) and 0 < np.mean([s.background.startswith("#") for s in specs]) < 1
    )


def test_oracle_batches_hold_near_misses_labelled_as_no_concept():
    from catlab.toyworld.oracle import CONCEPT_NAMES, NEAR_MISS_DISTANCE, make_oracle_batch, near_miss_spec
    from catlab.toyworld.world import CONCEPT_COLOURS

    rng = np.random.default_rng(0)
    for _ in range(100):
        s = near_miss_spec(rng)
        rgb = np.array([int(s.colour[k : k + 2], 16) for k in (1, 3, 5)])
        assert all(np.linalg.norm(rgb - np.array(c)) >= NEAR_MISS_DISTANCE for c in CONCEPT_COLOURS.values())
    _, _, colours, concepts = make_oracle_batch(np.random.default_rng(0), 400, concept_share=0.0, near_miss_share=1.0)
    assert (concepts == CONCEPT_NAMES.index("none")).all() and (
        colours == -1
    ).all()  # open colours name no palette colour


def test_close_misses_move_the_concepts_colour_or_backdrop_and_are_no_concept():
    from catlab.toyworld.oracle import CLOSE_MISS_SPAN, CONCEPT_NAMES, close_miss_spec, make_oracle_batch
    from catlab.toyworld.world import CONCEPT_BACKGROUNDS, CONCEPT_COLOURS

    def rgb(hex_colour: str) -> np.ndarray:
        return np.array([int(hex_colour[k : k + 2], 16) for k in (1, 3, 5)])

    rng = np.random.default_rng(0)
    moved = {"colour": 0, "backdrop": 0}
    for _ in range(60):
        s = close_miss_spec(rng, 45.0)
        if s.shape == "star":  # bronze_star: the object's colour moved, not the backdrop
            assert 45.0 <= np.linalg.norm(rgb(s.colour) - CONCEPT_COLOURS["bronze"]) <= 45.0 + CLOSE_MISS_SPAN
            moved["colour"] += 1
        else:  # circle_on_navy: the backdrop moved
            assert 45.0 <= np.linalg.norm(rgb(s.background) - CONCEPT_BACKGROUNDS["navy"]) <= 45.0 + CLOSE_MISS_SPAN
            moved["backdrop"] += 1
    assert min(moved.values()) > 10, moved
    _, _, colours, concepts = make_oracle_batch(np.random.default_rng(0), 64, concept_share=0.0, close_miss_share=1.0)
    assert (concepts == CONCEPT_NAMES.index("none")).all() and (colours == -1).all()


def test_solid_concepts_can_keep_their_colour_in_the_oracles_training():
    from catlab.toyworld.oracle import _concept_variant, close_miss_spec
    from catlab.toyworld.world import CONCEPT_BACKGROUNDS, CONCEPTS

    rng = np.random.default_rng(0)
    navy = CONCEPTS["circle_on_navy"]
    drifted = {_concept_variant(navy, rng).colour for _ in range(60)}
    kept = {_concept_variant(navy, rng, solid_drift=False).colour for _ in range(60)}
    assert kept == {"yellow"} and len(drifted) > 1, drifted
    two_tone = {_concept_variant(CONCEPTS["two_tone_circle"], rng, solid_drift=False).colour for _ in range(60)}
    assert len(two_tone) > 1, "patterned concepts still drift"
    misses = [close_miss_spec(rng, 35.0, solid_drift=False) for _ in range(200)]
    navy_rgb = np.array(CONCEPT_BACKGROUNDS["navy"])

    def off_navy(m) -> float:
        return float(np.linalg.norm(np.array([int(m.background[k : k + 2], 16) for k in (1, 3, 5)]) - navy_rgb))

    on_navy = [m for m in misses if m.shape == "circle" and off_navy(m) < 35.0]
    moved = [m for m in misses if m.shape == "circle" and off_navy(m) >= 35.0]
    assert on_navy and all(m.colour in ("orange", "green") for m in on_navy), {m.colour for m in on_navy}
    assert moved and all(m.colour == "yellow" for m in moved)


def test_open_colours_stage_retrains_only_the_vae_and_records_what_it_measured(tiny_assets, tmp_path):
    """`--stages open_colours`: the VAE alone is fine-tuned (the UNet file is untouched), and the recipe records the
    reconstruction errors and how far world latents moved."""
    import json
    import shutil

    from safetensors.torch import load_file

    from catlab.toyworld.pretrain import PretrainConfig, pretrain

    out = tmp_path / "assets"
    shutil.copytree(tiny_assets, out, ignore=shutil.ignore_patterns("_work"))
    vae_file = out / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors"
    unet_bytes, before = (
        (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes(),
        load_file(vae_file),
    )
    cfg = PretrainConfig.tiny()
    cfg.stages = ("open_colours",)
    pretrain(out, cfg, work_dir=tmp_path / "work")
    after = load_file(vae_file)
    assert (out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet_bytes
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    update = json.loads((out / "recipe.json").read_text())["updates"][-1]
    assert update["stages"] == ["open_colours"]
    measured = update["open_colours"]
    assert set(measured) == {
        "world_mae_before",
        "open_mae_before",
        "world_mae_after",
        "open_mae_after",
        "world_latent_rms_drift",
    }
    assert all(np.isfinite(v) and v >= 0 for v in measured.values()) and measured["world_latent_rms_drift"] > 0


def test_open_colours_stage_needs_an_existing_pipeline(tmp_path):
    from catlab.toyworld.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig.tiny()
    cfg.stages = ("open_colours",)
    with pytest.raises(FileNotFoundError, match=r"pipeline/vae.*build the pipeline first"):
        pretrain(tmp_path / "empty", cfg, work_dir=tmp_path / "work")


def test_open_patterns_draw_two_colours_and_leave_the_world_half_alone():
    """The open-colours stage's batch with a pattern share: at share 1 most open-colour objects show two large colour
    areas (halves or stripes), at share 0 few do (a solid colour split by coarse bins); the world images, and the
    open-colour ones at share 0, are the batch the shipped stage drew."""
    from catlab.toyworld.open_colours import draw_open_colour_batch

    def colour_areas(img) -> int:  # (3, 32, 32) in [-1, 1] -> coarse colours covering >= 20 % of the object each
        pixels = ((img.permute(1, 2, 0).reshape(-1, 3) + 1) * 127.5).round().numpy()
        backdrop = np.median(pixels[:32], axis=0)  # the top row is backdrop: objects keep a margin
        obj = pixels[np.linalg.norm(pixels - backdrop, axis=1) > 60]
        _, counts = np.unique((obj // 64).astype(int), axis=0, return_counts=True)
        return int((counts >= 0.2 * max(len(obj), 1)).sum())

    world0, open0 = draw_open_colour_batch(np.random.default_rng(0), 12)
    world1, open1 = draw_open_colour_batch(np.random.default_rng(0), 12, pattern_share=1.0)
    again0 = draw_open_colour_batch(np.random.default_rng(0), 12, pattern_share=0.0)[1]
    assert torch.equal(world0, world1) and torch.equal(open0, again0) and not torch.equal(open0, open1)
    two_coloured = [sum(colour_areas(img) >= 2 for img in batch) for batch in (open0, open1)]
    assert two_coloured[0] <= 4 and two_coloured[1] >= 8, two_coloured
