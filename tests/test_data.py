"""Concept folders: validation messages, caption sources, trigger removal, and deterministic augmentation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from catlab.config import ConceptConfig
from catlab.data.captions import trigger_free_caption
from catlab.data.concepts import ConceptDataError, ConceptDataWarning, load_images, validate_concept_folder
from catlab.data.dataset import ConceptDataset, collate_concept_batch


def make_image(path, size=(40, 40), mode="RGB", seed=0):
    """A noisy image, so that different crops and flips give different pixels."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)  # (H, W, 3)
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def make_folder(root, n=3, captions=True, size=(40, 40), trigger="sks", cls="circle"):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_image(root / f"img{i}.png", size, seed=i)
        if captions:
            (root / f"img{i}.txt").write_text(f"a {trigger} {cls} number {i}\n")
    return root


def validate_quietly(folder, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder must not warn
        return validate_concept_folder(folder, *args, **kwargs)


def problems_of(folder, *args, **kwargs) -> ConceptDataError:
    with pytest.raises(ConceptDataError) as info:
        validate_concept_folder(folder, *args, **kwargs)
    return info.value


# ----------------------------------------------------------------------------- good folders


def test_per_image_txt_captions(tmp_path):
    r = validate_quietly(make_folder(tmp_path / "c"), "sks", "circle", 32)
    assert [p.name for p in r.images] == ["img0.png", "img1.png", "img2.png"]
    assert r.captions == [f"a sks circle number {i}" for i in range(3)]
    assert r.sources == ["img0.txt", "img1.txt", "img2.txt"]
    assert r.ok and not r.notes and not r.warnings
    assert "img1.png" in str(r) and "40x40" in r.summary()


def test_captions_txt_with_tab_bar_and_stem(tmp_path):
    folder = make_folder(tmp_path / "c", captions=False)
    (folder / "captions.txt").write_text(
        "# file<TAB>caption\nimg0.png\ta sks circle\nimg1.png | a sks circle, big\n\nimg2|sks on a rug\n"
    )
    r = validate_quietly(folder, "sks", "circle", 32)
    assert r.captions == ["a sks circle", "a sks circle, big", "sks on a rug"]
    assert r.sources == ["captions.txt line 2", "captions.txt line 3", "captions.txt line 5"]


def test_captions_jsonl(tmp_path):
    folder = make_folder(tmp_path / "c", captions=False)
    rows = [{"file": f"img{i}.png", "caption": f"a sks circle {i}"} for i in range(3)]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert validate_quietly(folder, "sks", "circle", 32).captions == [
        "a sks circle 0",
        "a sks circle 1",
        "a sks circle 2",
    ]


def test_default_caption_and_template(tmp_path):
    folder = make_folder(tmp_path / "c", n=2, captions=False)
    assert validate_quietly(folder, "sks", "circle", 32).captions == ["a sks circle"] * 2
    r = validate_quietly(folder, "sks", "circle", 32, caption_template="a photo of {trigger} {class}")
    assert r.captions == ["a photo of sks circle"] * 2 and r.sources == ["default"] * 2


def test_per_image_txt_overrides_captions_file_with_note(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    (folder / "captions.txt").write_text("img0.png\ta sks circle from the list\n")
    r = validate_quietly(folder, "sks", "circle", 32)
    assert r.captions == ["a sks circle number 0"]
    assert any("img0.txt overrides" in n for n in r.notes)


def test_toy_concept_folder_loads_cleanly(tmp_path):
    from catlab.toyworld.build import build_tokenizer
    from catlab.toyworld.world import export_concept

    folder = export_concept("two_tone_circle", tmp_path / "toy")
    r = validate_quietly(folder, "sks", "circle", 32, tokenizer=build_tokenizer())
    assert len(r.images) == 5 and r.ok and not r.notes and not r.warnings  # concept.json is metadata, not a stray file
    ds = ConceptDataset([ConceptConfig(str(folder), "sks", "circle")], 32)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["caption"].startswith("a sks circle")


# ----------------------------------------------------------------------------- bad folders


def test_missing_and_empty_folder(tmp_path):
    err = problems_of(tmp_path / "nope", "sks", "circle", 32)
    assert "does not exist" in str(err) and "nope" in str(err)
    (tmp_path / "empty").mkdir()
    err = problems_of(tmp_path / "empty", "sks", "circle", 32)
    assert "folder is empty" in str(err) and "Fix" in str(err)


def test_corrupt_image(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    (folder / "broken.png").write_bytes(b"this is not a png at all")
    err = problems_of(folder, "sks", "circle", 32)
    assert "broken.png: cannot be read as an image" in str(err) and len(err.problems) == 1


def test_truncated_image(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    data = (folder / "img0.png").read_bytes()
    (folder / "img0.png").write_bytes(data[: len(data) // 2])
    assert "img0.png: cannot be read" in str(problems_of(folder, "sks", "circle", 32))


def test_non_image_file_is_a_note_or_an_error(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    (folder / "notes.docx").write_bytes(b"PK")
    r = validate_quietly(folder, "sks", "circle", 32)
    assert any("notes.docx" in n and "ignored" in n for n in r.notes)
    only = tmp_path / "only"
    only.mkdir()
    (only / "notes.docx").write_bytes(b"PK")
    err = problems_of(only, "sks", "circle", 32)
    assert "no usable images" in str(err) and "notes.docx" in str(err)


def test_an_image_smaller_than_the_resolution_is_upscaled_with_a_note(tmp_path):
    from catlab.data.dataset import ConceptDataset

    folder = make_folder(tmp_path / "c", n=1, size=(48, 24))
    r = validate_quietly(folder, "sks", "circle", 32)
    assert not r.errors and any("img0.png: 48x24 px is upscaled to the training resolution 32 px" in n for n in r.notes)
    item = ConceptDataset([{"folder": str(folder), "trigger": "sks", "class_word": "circle"}], resolution=32)[0]
    assert tuple(item["pixel_values"].shape) == (3, 32, 32)


def test_caption_without_trigger(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    (folder / "img0.txt").write_text("a circle that asks for nothing")  # "asks" must not count as "sks"
    err = problems_of(folder, "sks", "circle", 32)
    assert "img0.txt" in str(err) and "does not contain the trigger 'sks'" in str(err) and "'a sks circle'" in str(err)


def test_several_problems_in_one_error(tmp_path):
    folder = make_folder(tmp_path / "c", n=3)
    (folder / "img0.txt").write_text("a circle")
    (folder / "img1.txt").write_text("a sks circle")
    (folder / "img1.png").write_bytes(b"")  # empty: an upload that never arrived
    (folder / "img2.png").write_bytes(b"\x89PNG garbage")
    make_image(folder / "img3.png")
    (folder / "captions.txt").write_text("img3.png a sks circle without separator\nghost.png\ta sks circle\n")
    err = problems_of(folder, "sks", "circle", 32)
    msg = str(err)
    assert len(err.problems) == 5, msg
    for needle in (
        "img0.txt",
        "img1.png: cannot be read",
        "img2.png: cannot be read",
        "captions.txt line 1",
        "captions.txt line 2: no image named 'ghost.png'",
    ):
        assert needle in msg
    assert msg.count("Fix:") == 5


def test_report_without_raising(tmp_path):
    folder = make_folder(tmp_path / "c", n=2)
    (folder / "img0.txt").write_text("a circle")
    r = validate_concept_folder(folder, "sks", "circle", 32, raise_errors=False)
    assert not r.ok and [p.name for p in r.images] == ["img1.png"] and "errors:" in r.summary()


@pytest.mark.parametrize(
    "mode, ext, word",
    [("L", "png", "grayscale"), ("RGBA", "png", "RGBA"), ("CMYK", "jpg", "CMYK"), ("P", "png", "palette")],
)
def test_non_rgb_images_are_converted_with_a_note(tmp_path, mode, ext, word):
    folder = tmp_path / "c"
    folder.mkdir()
    make_image(folder / f"img.{ext}", mode=mode)
    r = validate_quietly(folder, "sks", "circle", 32)
    assert r.ok and any("img" in n and word in n and "converted to RGB" in n for n in r.notes)
    x = ConceptDataset([dict(folder=str(folder), trigger="sks", class_word="circle")], 32)[0]["pixel_values"]
    assert x.shape == (3, 32, 32)


def test_transparent_pixels_become_white(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(folder / "clear.png")
    x = ConceptDataset([ConceptConfig(str(folder), "sks", "circle")], 32)[0]["pixel_values"]
    assert torch.allclose(x, torch.ones_like(x))


# ----------------------------------------------------------------------------- tokenizer checks


def test_trigger_unknown_to_tokenizer_warns(tmp_path):
    from catlab.toyworld.build import build_tokenizer

    folder = make_folder(tmp_path / "c", n=1, trigger="blorp")
    with pytest.warns(ConceptDataWarning, match="blorp.*unknown token.*one known token"):
        r = validate_concept_folder(folder, "blorp", "circle", 32, tokenizer=build_tokenizer())
    assert r.ok and "unknown token" in r.warnings[0]
    folder = make_folder(tmp_path / "d", n=1, cls="dog")
    with pytest.warns(ConceptDataWarning, match="class word 'dog'"):
        validate_concept_folder(folder, "sks", "dog", 32, tokenizer=build_tokenizer())


class CharTokenizer:
    """One token per character: every longer word splits."""

    unk_token_id, unk_token, model_max_length = None, None, 10**30

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


def test_trigger_split_into_pieces_warns(tmp_path):
    folder = make_folder(tmp_path / "c", n=1)
    with pytest.warns(ConceptDataWarning, match="splits into 3 tokens"):
        validate_concept_folder(folder, "sks", "circle", 32, tokenizer=CharTokenizer())


def test_caption_longer_than_text_encoder_warns(tmp_path):
    from catlab.toyworld.build import build_tokenizer

    folder = make_folder(tmp_path / "c", n=1)
    (folder / "img0.txt").write_text("a sks circle on a dark background with a red star and a blue square")
    with pytest.warns(ConceptDataWarning, match="img0.png"):
        validate_concept_folder(folder, "sks", "circle", 32, tokenizer=build_tokenizer())


# ----------------------------------------------------------------------------- the trigger-free caption


@pytest.mark.parametrize(
    "caption, trigger, how, expected",
    [
        ("a sks circle", "sks", "drop", "a circle"),
        ("sks, a cat statue on a rug", "sks", "drop", "a cat statue on a rug"),
        ("a photo of SKS on a rug", "sks", "drop", "a photo of on a rug"),
        ("<sks> dog on a rug", "<sks>", "drop", "dog on a rug"),
        ("a circle, sks, on a rug", "sks", "drop", "a circle, on a rug"),
        ("a circle (sks)", "sks", "drop", "a circle"),
        ("it asks for sks", "sks", "drop", "it asks for"),
        ("the asks stay", "sks", "drop", "the asks stay"),
        ("a sks circle", "sks", "replace", "a circle"),
        ("sks on a rug", "sks", "replace", "circle on a rug"),
        ("a circle (sks)", "sks", "replace", "a circle"),
        ("two sks circles", "sks", "replace", "two circles"),
        ("a sks in the snow", "sks", "replace", "a circle in the snow"),
    ],
)
def test_trigger_free_caption(caption, trigger, how, expected):
    assert trigger_free_caption(caption, trigger, how, class_word="circle") == expected


def test_trigger_free_caption_bad_arguments():
    with pytest.raises(ValueError, match="class_word"):
        trigger_free_caption("a sks circle", "sks", "replace")
    with pytest.raises(ValueError, match="'drop' or 'replace'"):
        trigger_free_caption("a sks circle", "sks", "remove")


# ----------------------------------------------------------------------------- dataset


def test_items_and_collate(tmp_path):
    ds = ConceptDataset(
        [ConceptConfig(str(make_folder(tmp_path / "c", size=(48, 40))), "sks", "circle")], 32, trigger_free="replace"
    )
    item = ds[1]
    x = item["pixel_values"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert item["caption"] == "a sks circle number 1" and item["trigger_free_caption"] == "a circle number 1"
    assert item["class_prompt"] == "a circle" and item["concept"] == 0 and item["path"].endswith("img1.png")
    batch = collate_concept_batch([ds[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["concept"].tolist() == [0, 0, 0]
    assert batch["trigger_free_caption"] == [f"a circle number {i}" for i in range(3)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_concept_batch)
    assert next(iter(loader))["pixel_values"].shape == (2, 3, 32, 32)


def test_augmentation_is_deterministic_in_seed_epoch_and_index(tmp_path):
    concepts = [ConceptConfig(str(make_folder(tmp_path / "c", n=4, size=(56, 40))), "sks", "circle")]

    def epoch_pixels(ds, epoch, order=range(4)):
        ds.set_epoch(epoch)
        return {i: ds[i]["pixel_values"] for i in order}

    a, b = ConceptDataset(concepts, 32, seed=7), ConceptDataset(concepts, 32, seed=7)
    first = epoch_pixels(a, 3)
    epoch_pixels(b, 0)  # a resumed run has seen other epochs before; it must not matter
    again = epoch_pixels(b, 3, order=[3, 1, 0, 2])
    assert all(torch.equal(first[i], again[i]) for i in range(4))
    other = epoch_pixels(a, 4)
    assert any(not torch.equal(first[i], other[i]) for i in range(4))
    reseeded = epoch_pixels(ConceptDataset(concepts, 32, seed=8), 3)
    assert any(not torch.equal(first[i], reseeded[i]) for i in range(4))
    fixed = ConceptDataset(concepts, 32, center_crop=True, random_flip=False)
    assert all(torch.equal(x, y) for x, y in zip(epoch_pixels(fixed, 0).values(), epoch_pixels(fixed, 1).values()))


def test_center_crop_matches_manual_resize_and_crop(tmp_path):
    folder = make_folder(tmp_path / "c", n=1, size=(64, 32))
    x = ConceptDataset([ConceptConfig(str(folder), "sks", "circle")], 32, center_crop=True, random_flip=False)[0][
        "pixel_values"
    ]
    ref = np.asarray(Image.open(folder / "img0.png"), dtype=np.float32)[:, 16:48]  # (32, 32, 3): no resize needed
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1) / 127.5 - 1)


def test_multi_concept_indices_and_errors(tmp_path):
    a = make_folder(tmp_path / "a", n=2)
    b = make_folder(tmp_path / "b", n=3, trigger="zwx", cls="square")
    ds = ConceptDataset(
        [dict(folder=str(a), trigger="sks", class_word="circle"), ConceptConfig(str(b), "zwx", "square")], 32
    )
    assert len(ds) == 5 and [ds[i]["concept"] for i in range(5)] == [0, 0, 1, 1, 1]
    assert ds[4]["class_prompt"] == "a square" and ds[4]["trigger_free_caption"] == "a square number 2"
    assert "zwx" in ds.summary()
    (b / "img0.txt").write_text("a square")
    with pytest.raises(ConceptDataError) as info:
        ConceptDataset(
            [
                ConceptConfig(str(a), "sks", "circle"),
                ConceptConfig(str(b), "zwx", "square"),
                ConceptConfig(str(a), "sks", "circle"),
            ],
            32,
        )
    msg = str(info.value)
    assert len(info.value.problems) == 2 and "img0.txt" in msg and "also the trigger of concept 0" in msg


def test_bad_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match="trigger_free"):
        ConceptDataset([], 32, trigger_free="remove")
    with pytest.raises(ValueError, match="no concepts"):
        ConceptDataset([], 32)
    with pytest.raises(ValueError, match="folder, trigger, class_word"):
        ConceptDataset([dict(path="x", trigger="sks", class_word="circle")], 32)


def test_load_images(tmp_path):
    folder = make_folder(tmp_path / "c", n=2)
    make_image(folder / "gray.png", mode="L")
    images = load_images(folder)
    assert len(images) == 3 and all(im.mode == "RGB" for im in images)
    with pytest.raises(ConceptDataError, match="does not exist"):
        load_images(tmp_path / "nope")
