"""Notebook helpers: widget panels over plain values, a live training monitor, and the notebooks' figures.

Every helper works without a Jupyter frontend (papermill, nbval, a plain kernel): widgets are only displayed,
nothing waits for a click, and the figures are plain `matplotlib.figure.Figure` objects (no pyplot state).
A notebook keeps its settings as plain values in its `parameters` cell; a `ParamPanel` shows them as widgets,
and its `values()` are those plain values until a person edits a widget.

The helpers live in small modules, one idea each, and are all re-exported here (`from catlab.widgets import X`):
`presets` (world presets, concept configs, a notebook's set-up), `runs` (train, resume or reuse), `colab` (uploads,
Drive, download), `figures` (images and matplotlib figures), `method_grids`
(methods sampled and laid out side by side), `controls` (parameter panels, slider view, live training monitor),
`concept_editor` (uploads, captions, concept reports and folders) and `cat_explained` (the predictions CAT compares).
Heavy libraries (torch, diffusers, ipywidgets) are imported only inside the functions that need them.
"""

from __future__ import annotations

from catlab.widgets.cat_explained import NoisePredictions, noise_prediction_figure, noise_predictions
from catlab.widgets.colab import ColabSeam, in_colab, offer_download, outputs_on_drive, upload_photos
from catlab.widgets.concept_editor import CaptionEditor, report_html, save_photos, save_uploads, write_concept_folder
from catlab.widgets.controls import LiveTrainingMonitor, ParamPanel, slider_view
from catlab.widgets.figures import (
    colour_histograms,
    fig_png,
    image_strip,
    loss_figure,
    multi_concept_figure,
    pca_scatter,
    pil_png,
    smooth,
    sweep_figure,
    tensor_image,
    tradeoff_figure,
)
from catlab.widgets.method_grids import generate_methods, method_blocks, method_grid
from catlab.widgets.presets import (
    SD15_CLIP,
    SD15_MODEL,
    SIZES,
    WORLDS,
    Workbench,
    WorldPreset,
    concept_config,
    fill_sizes,
    make_train_config,
    setup_notebook,
    world_preset,
)
from catlab.widgets.runs import train_or_resume

__all__ = [
    "SD15_CLIP",
    "SD15_MODEL",
    "SIZES",
    "WORLDS",
    "CaptionEditor",
    "ColabSeam",
    "LiveTrainingMonitor",
    "NoisePredictions",
    "ParamPanel",
    "Workbench",
    "WorldPreset",
    "colour_histograms",
    "concept_config",
    "fig_png",
    "fill_sizes",
    "generate_methods",
    "image_strip",
    "in_colab",
    "loss_figure",
    "multi_concept_figure",
    "make_train_config",
    "method_blocks",
    "method_grid",
    "noise_prediction_figure",
    "noise_predictions",
    "offer_download",
    "outputs_on_drive",
    "pca_scatter",
    "pil_png",
    "report_html",
    "save_photos",
    "save_uploads",
    "setup_notebook",
    "slider_view",
    "smooth",
    "sweep_figure",
    "tensor_image",
    "tradeoff_figure",
    "train_or_resume",
    "upload_photos",
    "world_preset",
    "write_concept_folder",
]
