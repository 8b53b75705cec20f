"""Scores on hand-made embeddings, and the embedders (evaluate() itself: test_evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from eval_fakes import mean_colour, solid

from catlab.evaluation import metrics as M
from catlab.evaluation.embedders import CachedEmbedder, CallableEmbedder, ClipEmbedder, hash_image, load_embedder

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
    with pytest.raises(
        ValueError, match=r"embedder flat returned shape \(6,\) for 2 images; expected a 2-D array of shape \(2, D\)"
    ):
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
