"""Labelled image grids: rows x columns of images, upscaled crisply, with row and column labels and a title."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a fixed-size default font
        return ImageFont.load_default()


def image_grid(
    images: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int = 96,
    title: str | None = None,
) -> Image.Image:
    """Rows x columns of images, upscaled to `cell` px (nearest, so tiny images stay crisp), with labels."""
    rows, cols = len(images), max(len(r) for r in images)
    font = _font(max(11, cell // 8))
    label_w = 0
    if row_labels:
        label_w = max(int(font.getlength(s)) for s in row_labels) + 12
    top = (cell // 4 if col_labels else 0) + (cell // 3 if title else 0)
    grid = Image.new("RGB", (label_w + cols * cell, top + rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    y0 = top
    for c, lab in enumerate(col_labels or []):
        draw.text((label_w + c * cell + 4, y0 - cell // 4 + 2), str(lab), fill="black", font=font)
    for r, row in enumerate(images):
        if row_labels:
            draw.text((4, y0 + r * cell + cell // 2 - 6), row_labels[r], fill="black", font=font)
        for c, im in enumerate(row):
            resample = Image.NEAREST if im.width < cell else Image.LANCZOS
            grid.paste(im.convert("RGB").resize((cell, cell), resample), (label_w + c * cell, y0 + r * cell))
    return grid
