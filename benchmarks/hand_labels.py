"""Are the ground-truth scores as strict as a person looking at the grid? Trigger samples labelled by hand, against
the oracle's identity and the pixel-level fidelity.

    python benchmarks/hand_labels.py sheet runs/demo tests/data/hand_labels --per-method 16
    (look at tests/data/hand_labels/sheet.png and fill the `person` column of labels.csv with 1 or 0)
    python benchmarks/hand_labels.py check tests/data/hand_labels
    python benchmarks/hand_labels.py grid tests/data/hand_labels    # could other colour thresholds match the person?
    python benchmarks/hand_labels.py rules tests/data/hand_labels tests/data/hand_labels_bronze_star  # fidelity's tolerances
    python benchmarks/hand_labels.py blind tests/data/hand_labels /tmp/blind   # a second labeller's copy ...
    python benchmarks/hand_labels.py merge tests/data/hand_labels /tmp/blind   # ... and their labels.csv, read back

`sheet` copies trigger-prompt samples of a demo folder (the same number from each method, drawn at random, every
training seed) into the label folder with the concept's photos, and draws a numbered sheet to label from.
`check` scores every labelled sample again (the oracle shipped with catlab, fidelity.py's thresholds) and prints,
for each score, how often it agrees with the person, how often it says "the concept" where the person said no
(more generous than a person) and the reverse. tests/test_attributes.py runs the same check on the shipped labels.
`blind` copies the samples for a second labeller, shuffled, renamed and enlarged, without the first labels (a key
stays behind); they write `sample,label,note` into the copy's labels.csv, and `merge` puts those labels in the
`second` column. `check` then prints how far the two people agree, and each score against either of them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from catlab.files import write_csv_atomic

SHEET_CELL = 96  # pixels per sample on the sheet: 32-px samples, enlarged so that specks and colours are visible


def write_sheet(demo: Path, out: Path, per_method: int, seed: int = 0) -> Path:
    """Copy the chosen samples and the concept's photos into `out`, with labels.csv (person column empty)."""
    if (out / "labels.csv").exists():
        raise FileExistsError(f"{out / 'labels.csv'} exists: it may hold labels made by hand; choose another folder")
    per_image = pd.read_csv(demo / "eval" / "per_image.csv")
    trig = per_image[(per_image["kind"] == "trigger") & (per_image["method"] != "base")].copy()
    trig["family"] = trig["method"].str.replace(r"_s\d+$", "", regex=True)
    rng = np.random.default_rng(seed)
    picked = pd.concat(
        g.iloc[rng.choice(len(g), size=min(per_method, len(g)), replace=False)] for _, g in trig.groupby("family")
    )
    picked = picked.iloc[rng.permutation(len(picked))].reset_index(drop=True)  # methods mixed: labelled blind
    (out / "samples").mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo / "concept", out / "concept", dirs_exist_ok=True)
    rows = []
    for k, r in picked.iterrows():
        name = f"samples/{k:03d}.png"
        shutil.copyfile(demo / "eval" / r["image"], out / name)
        rows.append({"id": k, "image": name, "method": r["method"], "person": "", "note": ""})
    pd.DataFrame(rows).to_csv(out / "labels.csv", index=False)
    return _draw_sheet(out, [out / r["image"] for r in rows])


def _draw_sheet(out: Path, images: list[Path], columns: int = 8) -> Path:
    photos = sorted((out / "concept").glob("*.png"))
    rows = 1 + (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * SHEET_CELL, rows * (SHEET_CELL + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, p in enumerate(photos[:columns]):  # first row: the concept's photos
        sheet.paste(Image.open(p).convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.NEAREST), (k * SHEET_CELL, 14))
        draw.text((k * SHEET_CELL + 2, 0), "photo", fill="black")
    for k, p in enumerate(images):
        x, y = (k % columns) * SHEET_CELL, (1 + k // columns) * (SHEET_CELL + 14)
        sheet.paste(Image.open(p).convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.NEAREST), (x, y + 14))
        draw.text((x + 2, y), f"#{k}", fill="black")
    sheet.save(out / "sheet.png")
    return out / "sheet.png"


def score_labels(folder: Path, oracle=None) -> pd.DataFrame:
    """Each labelled sample with the person's label, the oracle's identity (the shipped oracle, or `oracle`) and the
    fidelity scores."""
    from catlab.evaluation.fidelity import score_fidelity
    from catlab.toyworld.assets import load_oracle
    from catlab.toyworld.oracle import read_images

    labels = pd.read_csv(folder / "labels.csv")
    if labels["person"].isna().any():
        raise ValueError(f"{folder / 'labels.csv'}: fill the person column (1 = the concept, 0 = not) for every row")
    meta = json.loads((folder / "concept" / "concept.json").read_text())
    images = [Image.open(folder / p).convert("RGB") for p in labels["image"]]
    photos = [Image.open(p).convert("RGB") for p in sorted((folder / "concept").glob("*.png"))]
    reading = read_images(oracle or load_oracle(), images)
    df = labels.assign(kind="trigger", oracle_shape=reading.shape)
    df["identity_ok"] = [float(c == meta["name"]) for c in reading.concept]
    return score_fidelity(df, images, photos, meta["class_word"])


def person_says(df: pd.DataFrame, against: str = "person") -> np.ndarray:
    """Who the scores are held to: a labeller's column, "either" (a yes from one of them) or "both"."""
    if against in ("either", "both"):
        a, b = (df[c].astype(int).to_numpy() == 1 for c in ("person", "second"))
        return (a | b) if against == "either" else (a & b)
    return df[against].astype(int).to_numpy() == 1


def agreement(df: pd.DataFrame, scores=("identity_ok", "faithful"), against: str = "person") -> pd.DataFrame:
    """Per score: agreement with the person (or `against`, see person_says), and the two kinds of disagreement, as
    counts and rates."""
    person = person_says(df, against)
    rows = []
    for s in scores:
        says = df[s].to_numpy() == 1
        rows.append(
            {
                "score": s,
                "against": against,
                "n": len(df),
                "agree": float((says == person).mean()),
                "more_generous": int((says & ~person).sum()),  # the score says concept, the person does not
                "stricter": int((~says & person).sum()),
                "rate": float(says.mean()),
                "person_rate": float(person.mean()),
            }
        )
    return pd.DataFrame(rows)


def labeller_agreement(df: pd.DataFrame) -> dict:
    """How far the two people agree: yes from both, from one only, from neither, and Cohen's kappa (agreement beyond
    what two labellers with these yes-rates would reach by chance; Cohen 1960)."""
    a, b = (df[c].astype(int).to_numpy() == 1 for c in ("person", "second"))
    observed = float((a == b).mean())
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return {
        "both": int((a & b).sum()),
        "person_only": int((a & ~b).sum()),
        "second_only": int((~a & b).sum()),
        "neither": int((~a & ~b).sum()),
        "agree": observed,
        "kappa": (observed - chance) / (1 - chance) if chance < 1 else float("nan"),
    }


def write_blind_copy(folder: Path, out: Path, enlarge: int = 8, seed: int = 2026) -> Path:
    """The samples and photos for a second labeller: shuffled, renamed s00.., enlarged, with no labels; the key
    (new name -> id) is kept in `folder`/blind_key.json so that `merge` can read their labels back."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: it may hold a labeller's work; choose another folder")
    labels = pd.read_csv(folder / "labels.csv")
    order = np.random.default_rng(seed).permutation(len(labels))
    (out / "samples").mkdir(parents=True)
    (out / "photos").mkdir()
    key = {}
    for new, old in enumerate(order):
        name = f"s{new:02d}"
        _enlarged(folder / labels["image"][old], enlarge).save(out / "samples" / f"{name}.png")
        key[name] = int(labels["id"][old])
    for p in sorted((folder / "concept").glob("*.png")):
        _enlarged(p, enlarge).save(out / "photos" / p.name)
    (folder / "blind_key.json").write_text(json.dumps(key, indent=1))
    return out


def _enlarged(path: Path, factor: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)


def merge_second_labels(folder: Path, blind: Path, column: str = "second") -> Path:
    """A labeller's labels (`blind`/labels.csv: sample,label,note) into the `second` (or `column`) and `second_note`
    columns of `folder`/labels.csv, through the key `write_blind_copy` kept."""
    key = json.loads((folder / "blind_key.json").read_text())
    theirs = pd.read_csv(blind / "labels.csv")
    missing = sorted(set(key) - set(theirs["sample"]))
    if missing or not theirs["label"].isin([0, 1]).all():
        raise ValueError(f"{blind / 'labels.csv'}: label every sample with 0 or 1 (missing: {missing[:5]})")
    by_id = {key[r.sample]: r for r in theirs.itertuples()}
    labels = pd.read_csv(folder / "labels.csv")
    note = "note" if column == "person" else f"{column}_note"
    if column in labels and labels[column].notna().any():
        raise FileExistsError(f"{folder / 'labels.csv'} already has {column!r} labels; merge into another column")
    labels[column] = [int(by_id[i].label) for i in labels["id"]]
    labels[note] = [by_id[i].note for i in labels["id"]]
    if "sure" in theirs:  # 1 = a clear call, 0 = borderline, when the labeller said so
        labels[f"{column}_sure"] = [int(by_id[i].sure) for i in labels["id"]]
    write_csv_atomic(folder / "labels.csv", labels)
    return folder / "labels.csv"


def threshold_grid(
    folder: Path, backdrop=(20, 25, 30, 35, 40), colour=(15, 20, 25, 30, 40, 60), against: str = "person"
) -> pd.DataFrame:
    """Could any thresholds match the person? A sample passes when its backdrop and its object's median colour are
    each within a distance (RGB units) of the concept's; per pair, "more generous/stricter" counts against the
    labels. Rows: backdrop tolerance; columns: object-colour tolerance."""
    from catlab.toyworld.attributes import learn_look, read_attributes

    labels = pd.read_csv(folder / "labels.csv")
    images = [Image.open(folder / p).convert("RGB") for p in labels["image"]]
    photos = [
        Image.open(p).convert("RGB").resize(images[0].size, Image.LANCZOS) for p in (folder / "concept").glob("*.png")
    ]
    look = learn_look(photos)
    reads = [read_attributes(im) for im in images]
    # a concept shown on varied backdrops has no setting to hold: only the colour tolerance then counts
    back = np.array([0.0 if look.backdrop is None else np.linalg.norm(r.backdrop - look.backdrop) for r in reads])
    obj = np.array([np.linalg.norm(np.median(r.object_pixels, 0) - look.colours[0]) for r in reads])
    person = person_says(labels, against)
    cells = {}
    for c in colour:
        says = [(back <= b) & (obj <= c) for b in backdrop]
        cells[f"colour {c}"] = [f"{int((s & ~person).sum())} / {int((~s & person).sum())}" for s in says]
    return pd.DataFrame(cells, index=[f"backdrop {b}" for b in backdrop])


def rule_grid(folders: list[Path], colour=(80, 60, 50, 40, 30), backdrop=(40, 35, 30)) -> pd.DataFrame:
    """Fidelity's own rule with other tolerances (COLOUR_MATCH, BACKDROP_TOLERANCE), per labelled folder: samples it
    calls faithful that no labeller accepted / accepted samples it rejects, of how many accepted."""
    import catlab.toyworld.attributes as attributes

    kept = attributes.COLOUR_MATCH, attributes.BACKDROP_TOLERANCE
    rows = []
    try:
        for c in colour:
            for b in backdrop:
                attributes.COLOUR_MATCH, attributes.BACKDROP_TOLERANCE = float(c), float(b)
                row = {"colour": c, "backdrop": b}
                for folder in folders:
                    df = score_labels(folder)
                    a = agreement(df, ("faithful",), "either" if "second" in df else "person").iloc[0]
                    row[folder.name] = f"{a.more_generous} / {a.stricter} of {round(a.person_rate * a.n)}"
                rows.append(row)
    finally:
        attributes.COLOUR_MATCH, attributes.BACKDROP_TOLERANCE = kept
    return pd.DataFrame(rows)


def radial_signature(image: Image.Image, bins: int = 16) -> np.ndarray | None:
    """The object's outline as seen from its centroid: per angle bin, the farthest object pixel, over the radius of
    a disc of the object's area (a circle is flat at about 1); None when there is no object."""
    from catlab.toyworld.attributes import OBJECT_DISTANCE, read_attributes

    arr = np.asarray(image.convert("RGB")).astype(np.float32)
    ys, xs = np.nonzero(np.linalg.norm(arr - read_attributes(arr.astype(np.uint8)).backdrop, axis=-1) > OBJECT_DISTANCE)
    if len(xs) < 5:
        return None
    dy, dx = ys - ys.mean(), xs - xs.mean()
    reach = np.hypot(dy, dx) / np.sqrt(len(xs) / np.pi)
    sector = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    return np.array([reach[sector == k].max() if (sector == k).any() else 0.0 for k in range(bins)])


def shape_distance(image: Image.Image, photo_signatures: list[np.ndarray]) -> float:
    """How far the object's outline is from the nearest photo's, at any rotation (mean absolute difference of the
    radial signatures; inf without an object)."""
    sig = radial_signature(image)
    if sig is None:
        return float("inf")
    return min(float(np.abs(np.roll(sig, k) - ref).mean()) for ref in photo_signatures for k in range(len(sig)))


def shape_table(folder: Path) -> pd.DataFrame:
    """Could the outline tell what the labellers rejected? Each sample's shape distance to the concept's photos, for
    the samples a labeller accepted and for those fidelity calls faithful that no labeller did, with the notes."""
    df = score_labels(folder)
    size = Image.open(folder / df["image"][0]).size
    photos = [
        radial_signature(Image.open(p).convert("RGB").resize(size, Image.LANCZOS))
        for p in sorted((folder / "concept").glob("*.png"))
    ]
    df["shape_distance"] = [shape_distance(Image.open(folder / p), photos) for p in df["image"]]
    accepted = person_says(df, "either" if "second" in df and df["second"].notna().all() else "person")
    df["group"] = np.where(accepted, "accepted", np.where(df["faithful"] == 1, "faithful, not accepted", "rejected"))
    return df[["id", "method", "group", "shape_distance", "note"]].sort_values(["group", "shape_distance"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sheet", help="copy samples from a demo folder and draw a sheet to label")
    s.add_argument("demo", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--per-method", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="compare the scores with the labels")
    c.add_argument("folder", type=Path)
    g = sub.add_parser("grid", help="more generous / stricter than the person for a grid of colour thresholds")
    g.add_argument("folder", type=Path)
    g.add_argument("--against", default="person", help="person, second, either or both (default: person)")
    r = sub.add_parser("rules", help="fidelity's own rule at other colour and backdrop tolerances, per folder")
    r.add_argument("folders", type=Path, nargs="+")
    sh = sub.add_parser("shapes", help="each sample's outline against the photos': accepted vs faithful-but-not")
    sh.add_argument("folder", type=Path)
    b = sub.add_parser("blind", help="a shuffled copy of the samples, without labels, for a second labeller")
    b.add_argument("folder", type=Path)
    b.add_argument("out", type=Path)
    m = sub.add_parser("merge", help="read a second labeller's labels.csv back into the `second` column")
    m.add_argument("folder", type=Path)
    m.add_argument("blind", type=Path)
    m.add_argument("--column", default="second", help="person (a new sheet's first labeller) or second")
    args = ap.parse_args()
    if args.command == "grid":
        print(f"more generous / stricter than {args.against}, per backdrop and object-colour tolerance (RGB units)")
        print(threshold_grid(args.folder, against=args.against).to_string())
    elif args.command == "rules":
        print("more generous / stricter than a yes from either labeller, per colour and backdrop tolerance (RGB)")
        print(rule_grid(args.folders).to_string(index=False))
    elif args.command == "shapes":
        table = shape_table(args.folder)
        with pd.option_context("display.width", 200, "display.max_colwidth", 70):
            print(table[table["group"] != "rejected"].round(3).to_string(index=False))
        rejected = table.loc[table["group"] == "rejected", "shape_distance"]
        print(
            f"rejected by a labeller and by fidelity ({len(rejected)}): shape distance {rejected.min():.3f}-"
            f"{rejected[np.isfinite(rejected)].max():.3f}, median {rejected.median():.3f}"
        )
    elif args.command == "sheet":
        print(f"label from {write_sheet(args.demo, args.out, args.per_method, args.seed)}")
    elif args.command == "blind":
        out = write_blind_copy(args.folder, args.out)
        print(f"label {out}/samples against {out}/photos into {out}/labels.csv (sample,label,note), then merge")
    elif args.command == "merge":
        print(f"labels written to {merge_second_labels(args.folder, args.blind, args.column)}")
    else:
        check(args.folder)


def check(folder: Path) -> None:
    """Print each score against the labels, and the two people against each other when there is a second."""
    df = score_labels(folder)
    second = "second" in df and df["second"].notna().all()
    against = ["person", "second", "either", "both"] if second else ["person"]
    print(pd.concat([agreement(df, against=a) for a in against]).to_string(index=False))
    if second:
        both = labeller_agreement(df)
        print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in both.items()))
    by_method = df.assign(family=df["method"].str.replace(r"_s\d+$", "", regex=True)).groupby("family")
    cols = ["person", *(["second"] if second else []), "identity_ok", "faithful"]
    print(by_method[cols].mean().round(2).to_string())


if __name__ == "__main__":
    main()
