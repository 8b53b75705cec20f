"""Scores on hand-made embeddings, embedders, and evaluate() with a fake deterministic generator."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catlab.evaluation import metrics as M
from catlab.evaluation import protocol as E
from catlab.evaluation import scoring as S
from catlab.evaluation.embedders import CachedEmbedder, CallableEmbedder, ClipEmbedder, hash_image, load_embedder
from catlab.toyworld.oracle import CONCEPT_NAMES, OracleReading
from catlab.toyworld.world import COLOUR_NAMES

# ----------------------------------------------------------------------------- scores on hand-made vectors


def test_identity_similarity_by_hand():
    gen, ref = [[1, 0], [0, 1]], [[2, 0]]  # cos 1 and 0 -> rescaled 1 and 0.5
    assert M.identity_similarity(gen, ref) == pytest.approx(0.75)
    np.testing.assert_allclose(M.identity_similarity(gen, ref, per_image=True), [1.0, 0.5])
    assert M.identity_similarity([[1, 0]], [[1, 0], [-1, 0]]) == pytest.approx(0.5)  # mean of 1 and 0 over references


def test_prompt_similarity_by_hand():
    assert M.prompt_similarity([[1, 0]], [[1, 0], [0, 1], [-1, 0]]) == pytest.approx(0.0)  # raw cosines 1, 0, -1
    assert M.prompt_similarity([[1, 0], [0, 1]], [[1, 1], [0, 3]]) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    with pytest.raises(ValueError, match="2 text embeddings for 3 images"):
        M.prompt_similarity([[1, 0], [0, 1]], np.eye(3, 2))


def test_knowledge_preservation_by_hand_and_paired():
    a, b = np.array([[1.0, 0], [0, 1]]), np.array([[1.0, 0], [1, 0]])  # cos 1 and 0
    assert M.knowledge_preservation(a, b) == pytest.approx(0.75)
    keyed_a = {("a circle", 0): a[0], ("a circle", 1): a[1]}
    keyed_b = {("a circle", 1): b[1], ("a circle", 0): b[0]}  # order does not matter, keys do
    assert M.knowledge_preservation(keyed_a, keyed_b) == pytest.approx(0.75)
    assert M.knowledge_preservation(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unpaired generations"):
        M.knowledge_preservation(a, b[:1])
    with pytest.raises(ValueError, match=r"only in base: \[\"\('a circle', 2\)\"\]"):
        M.knowledge_preservation(keyed_a, {**keyed_b, ("a circle", 2): b[0]})


def test_kps_is_the_harmonic_mean():
    assert M.kps(0.5, 1.0) == pytest.approx(2 / 3)
    assert M.kps(0.8, 0.8) == pytest.approx(0.8)
    assert M.kps(0.0, 0.0) == 0.0
    assert math.isnan(M.kps(math.nan, 1.0))


def test_diversity_by_hand():
    # pairs: (e1, e2) 1 - 0, (e1, -e1) 1 - (-1), (e2, -e1) 1 - 0 -> mean 4/3
    assert M.pairwise_diversity([[1, 0], [0, 1], [-1, 0]]) == pytest.approx(4 / 3)
    assert M.pairwise_diversity(np.ones((4, 3))) == pytest.approx(0.0)
    assert math.isnan(M.pairwise_diversity([[1, 0]]))


def test_vendi_identical_orthogonal_and_by_hand():
    assert M.vendi_score(np.tile([[0.3, 0.4, 0.5]], (6, 1))) == pytest.approx(1.0)
    assert M.vendi_score(np.eye(5)) == pytest.approx(5.0)
    # two vectors with cos 0.5: eigenvalues of K/2 are 0.75 and 0.25
    v = [[1, 0], [0.5, math.sqrt(3) / 2]]
    assert M.vendi_score(v) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_scores_are_bounded_on_random_vectors():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, r, b = rng.normal(size=(7, 16)), rng.normal(size=(3, 16)), rng.normal(size=(7, 16))
        is_, kp = M.identity_similarity(g, r), M.knowledge_preservation(g, b)
        assert 0 <= is_ <= 1 and 0 <= kp <= 1 and 0 <= M.kps(is_, kp) <= 1
        assert min(is_, kp) <= M.kps(is_, kp) <= max(is_, kp)
        assert 1 - 1e-9 <= M.vendi_score(g) <= 7 + 1e-9
    assert M.identity_similarity([[1, 0]], [[-1, 0]]) == pytest.approx(0.0)  # the extremes are reachable


def test_mean_ci95():
    mean, hw = M.mean_ci95([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert mean == pytest.approx(2.0) and hw == pytest.approx(4.303 / math.sqrt(3))
    mean, hw = M.mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(hw)
    assert M.mean_ci95([1.0, math.nan, 3.0])[0] == pytest.approx(2.0)
    assert M.t975(1000) == pytest.approx(1.9623, abs=1e-4)


# ----------------------------------------------------------------------------- embedders


def mean_colour(images):
    """A 3-D embedding: the mean RGB of each image, centred so colours point in different directions."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255 - 0.5 for im in images])


COLOUR_VECTORS = {"red": (0.5, -0.5, -0.5), "green": (-0.5, 0.5, -0.5), "blue": (-0.5, -0.5, 0.5), "pink": (0.5, -0.1, 0.2)}


def text_colour(texts):
    """Text embedding: the RGB direction of the first colour word (grey otherwise)."""
    return np.stack([next((COLOUR_VECTORS[w] for w in t.split() if w in COLOUR_VECTORS), (0.01, 0.01, 0.01)) for t in texts])


def solid(rgb, size=8) -> Image.Image:
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


def test_callable_embedder_normalises_validates_and_caches():
    calls = []

    def fn(images):
        calls.append(len(images))
        return mean_colour(images)

    emb = CallableEmbedder(fn, name="meancolour")
    ims = [solid((200, 20, 20)), solid((20, 200, 20)), solid((200, 20, 20))]
    out = emb.embed_images(ims)
    assert out.shape == (3, 3) and np.allclose(np.linalg.norm(out, axis=1), 1)
    assert calls == [2]  # the duplicate image is embedded once
    emb.embed_images([solid((200, 20, 20)), solid((20, 200, 20))])
    assert calls == [2]  # equal content, new objects: cache hit
    assert hash_image(solid((1, 2, 3))) != hash_image(solid((1, 2, 3), size=9))
    with pytest.raises(NotImplementedError, match="embeds images only"):
        emb.embed_texts(["a circle"])
    bad = CallableEmbedder(lambda ims: np.zeros(len(ims) * 3), name="flat")
    with pytest.raises(ValueError, match=r"embedder flat returned shape \(6,\) for 2 images; expected a 2-D array of shape \(2, D\)"):
        bad.embed_images(ims[:2])


def test_load_embedder_dispatch():
    emb = CallableEmbedder(mean_colour)
    assert load_embedder(emb) is emb
    assert isinstance(load_embedder(mean_colour), CallableEmbedder)

    class Duck:
        def embed_images(self, images):
            return mean_colour(images)

    wrapped = load_embedder(Duck())
    assert isinstance(wrapped, CachedEmbedder) and wrapped.embed_images([solid((9, 9, 9))]).shape == (1, 3)
    with pytest.raises(TypeError, match="cannot make an embedder from int"):
        load_embedder(3)
    with pytest.raises(FileNotFoundError, match="CLIP folder ./no/such/clip does not exist"):
        ClipEmbedder("./no/such/clip")


@pytest.fixture(scope="module")
def tiny_clip_root(tmp_path_factory):
    """An untrained toy CLIP saved exactly as the pretraining recipe saves it (seconds, not the minute of `tiny_assets`)."""
    import torch

    from catlab.toyworld import build

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("toy_assets")
    tok = build.build_tokenizer()
    build.build_clip(tok).save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    build.build_clip_image_processor().save_pretrained(root / "clip")
    return root


def test_clip_embedder_on_toy_clip(tiny_clip_root, monkeypatch):
    emb = ClipEmbedder(tiny_clip_root / "clip", device="cpu", batch_size=2)
    ims = [solid((200, 20, 20), 32), solid((20, 20, 200), 64), solid((20, 200, 20), 32).convert("L")]
    x = emb.embed_images(ims)
    assert x.shape == (3, 64) and np.allclose(np.linalg.norm(x, axis=1), 1)
    t = emb.embed_texts(["a red circle", "a sks circle on a dark background " * 5])  # the second is truncated
    assert t.shape == (2, 64) and np.allclose(np.linalg.norm(t, axis=1), 1)
    monkeypatch.setenv("CATLAB_TOYWORLD_DIR", str(tiny_clip_root))
    assert ClipEmbedder.toyworld(device="cpu").embed_images(ims[:1]) == pytest.approx(x[:1], abs=1e-5)
    toy = load_embedder("toyworld", device="cpu")
    assert toy is load_embedder("toyworld", device="cpu")  # loaded once per process: its cache is kept
    assert toy.embed_images(ims[:1]) == pytest.approx(x[:1], abs=1e-5)


# ----------------------------------------------------------------------------- evaluate with a fake generator


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


@pytest.fixture
def adapters(tmp_path):
    for name in ("cat", "drift"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "pytorch_lora_weights.safetensors").write_bytes(name.encode())
    return {"cat": tmp_path / "adapters" / "cat", "drift": tmp_path / "adapters" / "drift", "same": None}


def run_eval(out_dir, adapters, embedder=None, **kw):
    refs = [solid((245, 120, 190)), solid((240, 125, 185))]
    kw = {"templates": ["a {trigger} {class}", "a red {trigger} {class}", "a {trigger} {class} on a dark background"],
          "seeds": 4, "generate_fn": fake_generate, "activate_fn": fake_activate, "progress": False, **kw}
    embedder = embedder or CallableEmbedder(mean_colour, text_fn=text_colour)
    return E.evaluate(FakePipe(), adapters, refs, trigger="sks", class_word="circle", embedder=embedder, out_dir=out_dir, **kw)


def test_evaluate_scores_tables_and_files(tmp_path, adapters):
    df, summary = run_eval(tmp_path / "eval", adapters)
    assert len(df) == 4 * 3 * 2 * 4  # methods x templates x (trigger, class) x seeds
    assert {"method", "kind", "prompt", "seed", "image", "IS", "PS", "KP", "PRES", "DIV", "Vendi"} <= set(df.columns)
    assert set(df.loc[df.kind == "class", "prompt"]) == {"a circle", "a red circle", "a circle on a dark background"}
    s = summary.set_index("method")
    assert list(s.index) == ["base", "cat", "drift", "same"]
    assert s.loc["base", "KP_mean"] == pytest.approx(1.0) and s.loc["same", "KP_mean"] == pytest.approx(1.0)
    assert s.loc["same", "PRES_mean"] == pytest.approx(s.loc["base", "PRES_mean"])  # the base model as an adapter changes nothing
    assert s.loc["cat", "IS_mean"] > s.loc["base", "IS_mean"]  # it learnt the concept...
    assert s.loc["cat", "KP_mean"] > s.loc["drift", "KP_mean"]  # ...without forgetting the class, unlike drift
    assert s.loc["drift", "PRES_mean"] > s.loc["cat", "PRES_mean"]  # drift's class prompts collapse onto the concept
    assert s.loc["cat", "KPS_mean"] > s.loc["drift", "KPS_mean"]
    for col in ("IS", "KP", "KPS", "PRES"):
        assert summary[f"{col}_mean"].between(0, 1).all()
    assert (s["n_seeds"] == 4).all() and np.isfinite(s.loc["cat", "IS_ci95"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "eval" / "summary.csv"), summary, check_dtype=False)
    assert (tmp_path / "eval" / "per_image.csv").is_file() and (tmp_path / "eval" / df.image[0]).is_file()
    html = S.style_summary(summary).to_html()
    assert "KPS ↑" in html and "PRES ↓" in html and "±" in html


def test_evaluate_is_deterministic(tmp_path, adapters):
    a, _ = run_eval(tmp_path / "a", adapters)
    b, _ = run_eval(tmp_path / "b", adapters)
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_reuses_cached_images_and_embeddings(tmp_path, adapters):
    calls = []

    def counted(images):
        calls.append(len(images))
        return mean_colour(images)

    emb = CallableEmbedder(counted, text_fn=text_colour)
    fake_generate.calls = 0
    first, _ = run_eval(tmp_path / "eval", adapters, embedder=emb)
    n_gen, n_emb = fake_generate.calls, len(calls)
    assert n_gen == 3  # base (shared by 'same'), cat, drift
    second, _ = run_eval(tmp_path / "eval", adapters, embedder=emb)
    assert fake_generate.calls == n_gen and len(calls) == n_emb  # nothing generated or embedded again
    pd.testing.assert_frame_equal(first, second)
    third, _ = run_eval(tmp_path / "eval", adapters, embedder=emb, num_inference_steps=3)  # other settings: other images
    assert fake_generate.calls == n_gen + 3


def test_evaluate_with_an_oracle(tmp_path, adapters):
    def oracle(images):  # reads pinkish images as the concept, everything else by its strongest channel
        rgb = mean_colour(images)
        pink = [bool(r > 0.3 and g < 0.1 and b > 0.05) for r, g, b in rgb]
        colour = ["pink" if p else ("red", "green", "blue")[int(np.argmax(c))] for p, c in zip(pink, rgb)]
        return OracleReading(shape=["circle"] * len(images), colour=colour,
                             concept=["two_tone_circle" if p else "none" for p in pink], concept_prob=np.zeros((len(images), 4)))

    df, summary = run_eval(tmp_path / "eval", {"drift": adapters["drift"]}, oracle=oracle, templates=["a {trigger} {class}", "a red {trigger} {class}"])
    s = summary.set_index("method")
    assert s.loc["drift", "collapse_rate_mean"] == pytest.approx(1.0) and s.loc["base", "collapse_rate_mean"] < 0.5
    assert s.loc["base", "attr_acc_mean"] > s.loc["drift", "attr_acc_mean"]  # drift no longer draws "a red circle" red
    assert s.loc["drift", "colour_entropy_mean"] == pytest.approx(0.0)  # every class image is pink
    assert s.loc["drift", "n_prompts"] == 2 and df.loc[df.prompt == "a red circle", "colour_entropy"].isna().all()


def test_evaluate_clear_errors(tmp_path, adapters):
    with pytest.raises(ValueError, match="template list is empty"):
        run_eval(tmp_path, adapters, templates=[])
    with pytest.raises(ValueError, match=r"has no \{class\} placeholder"):
        run_eval(tmp_path, adapters, templates=["a {trigger} thing"])
    with pytest.raises(ValueError, match=r"only \{trigger\} and \{class\} are allowed"):
        run_eval(tmp_path, adapters, templates=["a {trigger} {colour} {class}"])
    with pytest.raises(ValueError, match=r"embedder squeezed returned shape \(\d+,\) for \d+ images"):
        run_eval(tmp_path, adapters, embedder=CallableEmbedder(lambda ims: mean_colour(ims)[:, 0], name="squeezed"))
    with pytest.raises(FileNotFoundError, match="adapter 'lost': .* does not exist"):
        run_eval(tmp_path, {"lost": tmp_path / "nope"})
    with pytest.raises(ValueError, match="unpaired generations"):
        df = pd.DataFrame({"method": ["cat"], "kind": ["class"], "template": ["a {trigger} {class}"], "prompt": ["a circle"], "seed": [0]})
        S.score_images(df, [solid((1, 2, 3))], S.Concept("sks", "circle", [solid((4, 5, 6))]), CallableEmbedder(mean_colour))


def test_templates_and_concepts():
    assert E.trigger_free_template("a {trigger} {class} on a dark background") == "a {class} on a dark background"
    assert E.expand_templates(["a red {trigger} {class}"], "sks", "circle") == [("a red {trigger} {class}", "a red sks circle", "a red circle")]
    c = E.load_concept("two_tone_circle")
    assert (c.trigger, c.class_word, c.name, len(c.references)) == ("sks", "circle", "two_tone_circle", 5)
    with pytest.raises(ValueError, match="a trigger and a class word are needed"):
        E.load_concept([solid((1, 2, 3))])


def test_evaluate_with_a_toy_oracle_folder(tmp_path, adapters):
    from safetensors.torch import save_file

    from catlab.toyworld.oracle import Oracle

    save_file(Oracle().state_dict(), tmp_path / "oracle.safetensors")  # untrained: checks the plumbing, not the readings
    df, summary = run_eval(tmp_path / "eval", adapters, oracle=tmp_path, templates=["a {trigger} {class}"], seeds=2)
    assert df["oracle_concept"].isin(CONCEPT_NAMES).all()
    assert summary[["collapse_rate_mean", "attr_acc_mean", "colour_entropy_mean"]].notna().all().all()


def test_eval_cli_and_python_share_the_real_pipeline_cache(tmp_path, tiny_clip_root):
    """The real contract (catlab.models + catlab.sampling.sampler) on an untrained tiny pipeline with a perturbed LoRA:
    `catlab eval` generates, then evaluate() on the loaded pipeline finds every image in the cache."""
    pytest.importorskip("catlab.sampling.sampler")
    import torch

    from catlab import models
    from catlab.cli import main
    from catlab.sampling.sampler import generate
    from catlab.toyworld import build
    from catlab.toyworld.world import export_concept

    torch.manual_seed(0)
    tok = build.build_tokenizer()
    build.assemble_pipeline(build.build_unet(), build.build_vae(), build.build_text_encoder(tok), tok).save_pretrained(tmp_path / "pipe")
    (tmp_path / "pipe" / models.SAMPLING_FILE).write_text('{"num_inference_steps": 2}')
    pipe = models.load_base(str(tmp_path / "pipe"))
    models.add_lora(pipe.unet, rank=2, adapter_name="x")
    with torch.no_grad():
        for p in models.lora_parameters(pipe.unet):
            p.normal_(0, 0.5)
    models.save_lora(pipe, tmp_path / "lora", adapter_name="x")
    pipe.unet.delete_adapters("x")
    concept = export_concept("two_tone_circle", tmp_path / "concept")
    out, clip = tmp_path / "eval", tiny_clip_root / "clip"

    assert main(["eval", "--base", str(tmp_path / "pipe"), "--adapter", f"lora={tmp_path / 'lora'}", "--concept", str(concept),
                 "--trigger", "sks", "--class-word", "circle", "--embedder", str(clip), "--seeds", "1", "--trigger-seeds", "1",
                 "--out", str(out)]) == 0
    cli_summary = pd.read_csv(out / "summary.csv")
    summary = cli_summary.set_index("method")
    assert summary.loc["base", "KP_mean"] == pytest.approx(1.0) and summary.loc["lora", "KP_mean"] < 1.0
    assert summary["PS_mean"].notna().all()

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    df, again = E.evaluate(pipe, {"lora": tmp_path / "lora", "same": None}, concept, seeds=1, embedder=clip, out_dir=out, generate_fn=counted)
    assert calls == [] and again.set_index("method").loc["same", "KP_mean"] == pytest.approx(1.0)
    pd.testing.assert_frame_equal(again.iloc[:2], cli_summary, check_dtype=False)


def test_evaluate_draws_trigger_prompts_on_their_own_seeds(tmp_path, adapters):
    calls = []

    def recording_generate(pipe, prompts, seeds, **kw):
        calls.append((tuple(prompts), tuple(seeds)))
        return fake_generate(pipe, prompts, seeds, **kw)

    df, summary = run_eval(tmp_path / "eval", {"cat": adapters["cat"]}, templates=["a {trigger} {class}"], seeds=4, trigger_seeds=2,
                           generate_fn=recording_generate)
    assert calls == [(("a sks circle",), (0, 1)), (("a circle",), (0, 1, 2, 3))] * 2, "each prompt on its own seeds, nothing extra drawn"
    assert sorted(df.loc[df.kind == "trigger", "seed"].unique()) == [0, 1] and sorted(df.loc[df.kind == "class", "seed"].unique()) == [0, 1, 2, 3]
    s = summary.set_index("method")
    assert (s["n_seeds"] == 4).all() and np.isfinite(s.loc["cat", ["IS_mean", "KP_mean", "KPS_mean"]].astype(float)).all()
    seeds = S.per_seed_scores(df).set_index(["method", "seed"])
    assert seeds.loc[("cat", 3), "KP"] > 0 and np.isnan(seeds.loc[("cat", 3), "IS"]), "seeds 2-3 have class samples only"
    assert s.loc["cat", "IS_mean"] == pytest.approx(seeds.loc[[("cat", 0), ("cat", 1)], "IS"].mean())
    with pytest.raises(ValueError, match="trigger_seeds must be a positive count"):
        run_eval(tmp_path / "bad", {"cat": adapters["cat"]}, trigger_seeds=0)


def test_evaluate_reports_paired_preservation_colour_distance_and_valid_rate(tmp_path, adapters):
    def oracle(images):  # colour by the strongest channel; the shape is read confidently only for bright images
        rgb = mean_colour(images)
        return OracleReading(shape=["circle"] * len(images), colour=[("red", "green", "blue")[int(np.argmax(c))] for c in rgb],
                             concept=["none"] * len(images), concept_prob=np.zeros((len(images), 4)),
                             shape_prob=np.where(rgb.max(1) > 0.2, 0.99, 0.4))

    df, summary = run_eval(tmp_path / "eval", {"same": adapters["same"], "drift": adapters["drift"]}, oracle=oracle,
                           templates=["a {trigger} {class}"])
    s = summary.set_index("method")
    assert s.loc["base", "paired_preservation_mean"] == 1.0 and s.loc["same", "paired_preservation_mean"] == 1.0
    assert s.loc["base", "colour_distance_mean"] == 0.0 and s.loc["same", "colour_distance_mean"] == 0.0
    cls = df[df.kind == "class"]
    for method in ("drift",):  # recompute from the rows with the pure functions
        mine, base = cls[cls.method == method].sort_values("seed"), cls[cls.method == "base"].sort_values("seed")
        expected = M.paired_preservation(list(zip(mine.oracle_colour, mine.oracle_shape)), list(zip(base.oracle_colour, base.oracle_shape)))
        assert s.loc[method, "paired_preservation_mean"] == pytest.approx(expected)
        assert s.loc[method, "colour_distance_mean"] == pytest.approx(M.colour_distance(mine.oracle_colour.tolist(), base.oracle_colour.tolist(), COLOUR_NAMES))
    assert s.loc["drift", "paired_preservation_mean"] < 0.5  # pink everywhere: few seeds keep the base's colour
    assert df.loc[df.kind == "trigger", ["preserved", "valid"]].isna().all().all()
    assert set(cls["valid"].unique()) <= {0.0, 1.0}
