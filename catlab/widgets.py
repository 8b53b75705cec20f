"""Notebook helpers: widget panels over plain values, a live training monitor, and the notebooks' figures.

Every helper works without a Jupyter frontend (papermill, nbval, a plain kernel): widgets are only displayed,
nothing waits for a click, and the figures are plain `matplotlib.figure.Figure` objects (no pyplot state).
A notebook keeps its settings as plain values in its `parameters` cell; a `ParamPanel` shows them as widgets,
and its `values()` are those plain values until a person edits a widget.
"""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .train import TrainCallback, TrainResult

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_CLIP = "openai/clip-vit-base-patch32"

# ----------------------------------------------------------------------------- set-up


def quiet() -> None:
    """Hide library notices that do not concern a notebook reader: diffusers' "no text-encoder LoRA keys", peft's
    "multiple adapters" warning, and the weight-loading progress bars. Training and sampling bars stay."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute")


# ----------------------------------------------------------------------------- worlds


@dataclass(frozen=True)
class WorldPreset:
    """Base model, embedder and run sizes of a world: the CPU toy world or Stable Diffusion 1.5 on a GPU."""

    name: str
    base_model: str  # for load_base / TrainConfig.base_model
    embedder: str  # for catlab.embedders.load_embedder
    use_oracle: bool  # the toy world's oracle reads shape, colour and concept; real photos have none
    concept_px: int  # size at which a toy concept is exported (SD 1.5 needs >= 512 px images)
    resolution: int | None  # training resolution; None = the base model's native size
    mixed_precision: str
    steps: int
    rank: int
    learning_rate: float
    batch_size: int
    sample_steps: int
    guidance_scale: float | None  # None = the base model's default
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


WORLDS = {
    "toy": WorldPreset("toy", "toyworld", "toyworld", True, 64, 32, "no", steps=40, rank=4, learning_rate=2e-3, batch_size=4,
                       sample_steps=10, guidance_scale=None),
    "sd15": WorldPreset("sd15", SD15_MODEL, SD15_CLIP, False, 512, 512, "fp16", steps=900, rank=1, learning_rate=1e-4, batch_size=1,
                        sample_steps=50, guidance_scale=7.5, seeds=list(range(8))),
}


def world_preset(world: str) -> WorldPreset:
    """The preset of `world` ('toy' or 'sd15'), with a clear error for anything else."""
    if world not in WORLDS:
        raise ValueError(f"world={world!r}: choose one of {sorted(WORLDS)} ('toy' runs on a CPU, 'sd15' needs a GPU)")
    return WORLDS[world]


def concept_config(concept: str | None = None, folder: str | Path | None = None, export_to: str | Path | None = None,
                   trigger: str | None = None, class_word: str | None = None, px: int = 64) -> Any:
    """A ConceptConfig from a folder (trigger / class word default to its concept.json), or from a toy concept
    exported (overwriting) to `export_to` at `px` pixels when no folder is given."""
    from .config import ConceptConfig
    from .toyworld.world import CONCEPTS, export_concept

    meta: dict[str, Any] = {}
    if folder is None:
        if concept not in CONCEPTS:
            raise ValueError(f"concept={concept!r}: choose a toy concept ({', '.join(CONCEPTS)}) or pass a concept folder")
        if export_to is None:
            raise ValueError("pass export_to= (where to write the toy concept's images)")
        folder = export_concept(concept, export_to, resolution=px, overwrite=True)
    folder = Path(folder).expanduser()
    if (folder / "concept.json").is_file():
        meta = json.loads((folder / "concept.json").read_text())
    elif concept in CONCEPTS:
        meta = {"trigger": CONCEPTS[concept].trigger, "class_word": CONCEPTS[concept].class_word}
    trigger, class_word = trigger or meta.get("trigger"), class_word or meta.get("class_word")
    if not trigger or not class_word:
        raise ValueError(f"{folder}: no concept.json says its trigger and class word; set trigger= and class_word=")
    return ConceptConfig(str(folder), trigger, class_word)


# ----------------------------------------------------------------------------- images and figures


def tensor_image(x: Any) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] (what the trainer sees) as a PIL image."""
    arr = ((x.detach().float().cpu().permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def generate_methods(pipe: Any, methods: Mapping[str, tuple[Sequence[str], Sequence[float]] | None], prompts: Sequence[str],
                     seeds: Sequence[int], **kwargs: Any) -> dict[str, list[list[Image.Image]]]:
    """images[method][prompt][seed] for each method = (adapter names, weights), or None for the base model.

    Same prompts and seeds for every method, so the images are paired; adapters are disabled afterwards.
    """
    from .models import set_active_adapters
    from .sample import generate

    out = {}
    try:
        for name, spec in methods.items():
            set_active_adapters(pipe, *(spec if spec else (None,)))
            out[name] = generate(pipe, list(prompts), list(seeds), progress=False, **kwargs)
    finally:
        set_active_adapters(pipe, None)
    return out


def method_grid(images: Mapping[str, Sequence[Sequence[Image.Image]]], prompts: Sequence[str], seeds: Sequence[int],
                cell: int = 72, title: str | None = None, by_prompt: bool = True) -> Image.Image:
    """One labelled grid of `generate_methods` output: a row per (prompt, method), a column per seed."""
    from .sample import image_grid

    keys = [(p, m) for p in range(len(prompts)) for m in images] if by_prompt else [(p, m) for m in images for p in range(len(prompts))]
    rows = [images[m][p] for p, m in keys]
    labels = [f"{m}: {prompts[p]}" for p, m in keys]
    return image_grid(rows, labels, [f"seed {s}" for s in seeds], cell=cell, title=title)



def fig_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (for ipywidgets.Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def pil_png(img: Image.Image) -> bytes:
    """PNG bytes of a PIL image (for ipywidgets.Image)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_strip(images: Sequence[Image.Image], titles: Sequence[str] | None = None, ncols: int = 5, size: float = 1.9,
                title: str | None = None) -> Figure:
    """Images in a grid with a wrapped caption above each (nearest upscaling keeps 32 px images crisp)."""
    n = max(1, len(images))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols, (size + 0.45) * nrows))
    for i, img in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
        ax.set_axis_off()
        if titles:
            ax.set_title("\n".join(textwrap.wrap(titles[i], 22)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_figure(history: Sequence[Mapping[str, float]], title: str = "training loss", total_steps: int | None = None,
                size: tuple[float, float] = (5.0, 3.0)) -> Figure:
    """Loss terms against step (thin: raw, thick: moving average); the CAT and prior terms when present."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    window = max(1, len(history) // 10)
    for key, colour in (("loss", "black"), ("ldm", "tab:blue"), ("cat", "tab:red"), ("prior", "tab:green")):
        pts = [(s, h[key]) for s, h in zip(steps, history) if key in h]
        if not pts or (key == "ldm" and all("cat" not in h and "prior" not in h for h in history)):
            continue  # ldm equals loss when there is no second term
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=colour, alpha=0.25, lw=0.8)
        ax.plot(xs, smooth(ys, window), color=colour, lw=1.8, label={"ldm": "L_LDM (trigger)", "cat": "CAT term (unweighted)",
                                                                     "prior": "prior term"}.get(key, "total"))
    ax.set_xlabel("step")
    ax.set_yscale("log")
    if total_steps:
        ax.set_xlim(0, total_steps)
    ax.set_title(title, fontsize=10)
    if history:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- parameter panels


def _widget_for(name: str, value: Any, options: Sequence | None):
    import ipywidgets as w

    style, layout = {"description_width": "140px"}, w.Layout(width="420px")
    if options is not None:
        return w.Dropdown(options=list(options), value=value, description=name, style=style, layout=layout)
    if isinstance(value, bool):
        return w.Checkbox(value=value, description=name, style=style, layout=layout)
    if isinstance(value, int):
        return w.IntText(value=value, description=name, style=style, layout=layout)
    if isinstance(value, float):
        return w.FloatText(value=value, description=name, style=style, layout=layout)
    if isinstance(value, str):
        return w.Text(value=value, description=name, style=style, layout=layout)
    # None, lists, ...: a Python literal in a text box
    return w.Text(value="" if value is None else repr(value), placeholder="None", description=name, style=style, layout=layout)


def _parse(text: str) -> Any:
    text = text.strip()
    if not text or text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class ParamPanel:
    """Widgets over plain values. `values()` returns the current values: the plain ones until a person edits.

    `options` maps a name to the choices of a dropdown (values, or (label, value) pairs). `add_button(label, fn)`
    adds a button that calls `fn(**values())` and prints into the panel's output area; nothing waits for it.
    """

    def __init__(self, values: Mapping[str, Any], options: Mapping[str, Sequence] | None = None, title: str | None = None):
        import ipywidgets as w

        self.defaults = dict(values)
        self._literal = {k for k, v in values.items() if not isinstance(v, (bool, int, float, str)) and k not in (options or {})}
        self.controls = {k: _widget_for(k, v, (options or {}).get(k)) for k, v in values.items()}
        self.output = w.Output()
        self.buttons = w.HBox([])
        self.result: Any = None
        head = [w.HTML(f"<b>{title}</b>")] if title else []
        self.widget = w.VBox([*head, *self.controls.values(), self.buttons, self.output])

    def values(self) -> dict[str, Any]:
        """The current value of every control (plain Python values)."""
        return {k: _parse(c.value) if k in self._literal else c.value for k, c in self.controls.items()}

    def changed(self) -> dict[str, Any]:
        """Only the values a person changed."""
        return {k: v for k, v in self.values().items() if v != self.defaults[k]}

    def add_button(self, description: str, fn: Callable[..., Any], button_style: str = "primary"):
        """A button that runs `fn(**self.values())` into the output area and keeps its return value in `self.result`."""
        import ipywidgets as w

        button = w.Button(description=description, button_style=button_style)

        def on_click(_: Any) -> None:
            with self.output:
                self.output.clear_output()
                try:
                    self.result = fn(**self.values())
                except Exception as e:  # show it in the panel: a widget callback has nowhere else to report
                    print(f"{type(e).__name__}: {e}")

        button.on_click(on_click)
        self.buttons.children = (*self.buttons.children, button)
        return button

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def slider_view(render: Callable[[float], Image.Image], value: float, min: float = 0.0, max: float = 1.5, step: float = 0.25,
                description: str = "scale"):
    """A FloatSlider above an image; `render(value)` draws the image now and again whenever the slider is released."""
    import ipywidgets as w

    slider = w.FloatSlider(value=value, min=min, max=max, step=step, description=description, continuous_update=False)
    view, status = w.Image(format="png"), w.HTML()

    def update(change: Any = None) -> None:
        status.value = f"<i>drawing {description} = {slider.value:g} …</i>"
        view.value = pil_png(render(slider.value))
        status.value = f"{description} = {slider.value:g}"

    slider.observe(update, names="value")
    update()
    return w.VBox([slider, status, view])


# ----------------------------------------------------------------------------- training monitor


class LiveTrainingMonitor(TrainCallback):
    """A TrainCallback that redraws the loss curve every `every` steps and shows each validation grid.

    Display it (`display(monitor)`) before training. Without a frontend the widgets just hold their last value;
    at the end the final loss figure and sample grid are also shown as plain outputs, and a summary line is printed.
    """

    def __init__(self, total_steps: int, every: int = 5, title: str = "training", show_final: bool = True):
        import ipywidgets as w

        self.total_steps, self.every, self.title, self.show_final = total_steps, max(1, every), title, show_final
        self.history: list[dict] = []
        self.grids: list[tuple[int, Image.Image]] = []
        self.status = w.HTML(f"<b>{title}</b>: waiting for the first step")
        self.loss_view = w.Image(format="png")
        self.grid_view = w.Image(format="png")
        self.widget = w.VBox([self.status, w.HBox([self.loss_view, self.grid_view])])

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    def figure(self) -> Figure:
        return loss_figure(self.history, self.title, self.total_steps)

    def on_step(self, step: int, logs: dict) -> None:
        self.history.append(dict(logs))
        self.status.value = f"<b>{self.title}</b>: step {step}/{self.total_steps}, loss {logs['loss']:.4f}"
        if step % self.every == 0 or step == self.total_steps:
            self.loss_view.value = fig_png(self.figure(), dpi=80)

    def on_validation(self, step: int, images: dict[str, list]) -> None:
        from .sample import image_grid

        grid = image_grid(list(images.values()), row_labels=list(images), cell=64, title=f"step {step}")
        self.grids.append((step, grid))
        self.grid_view.value = pil_png(grid)

    def on_end(self, result: TrainResult) -> None:
        from IPython.display import display

        self.loss_view.value = fig_png(self.figure(), dpi=80)
        last = self.history[-1] if self.history else {}
        terms = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "ldm", "cat", "prior") if k in last)
        line = f"{self.title}: {len(self.history)} steps in {result.wall_time_s:.1f} s ({terms}); adapter: {result.adapter_dir}"
        self.status.value = f"<b>done</b> — {line}"
        print(line)
        if self.show_final:
            display(self.figure())
            if self.grids:
                display(self.grids[-1][1])


# ----------------------------------------------------------------------------- concept data


def save_uploads(uploaded: Any, folder: str | Path) -> list[Path]:
    """Write the files of an ipywidgets 8 FileUpload `.value` (a tuple of dicts with name and content) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in uploaded or ():
        name = Path(str(item["name"])).name  # never a path from the browser
        p = folder / name
        p.write_bytes(bytes(item["content"]))
        paths.append(p)
    return paths


def _replace_word(text: str, old: str, new: str) -> str:
    if not old or old == new:
        return text
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, text, flags=re.IGNORECASE)


class CaptionEditor:
    """Caption text boxes beside thumbnails of a folder's images, with trigger and class-word boxes above.

    Changing the trigger (or class word) box rewrites that word in every caption. `save()` writes one
    `<image>.txt` per image; nothing is written until it is called (or its button is clicked).
    """

    def __init__(self, folder: str | Path, trigger: str, class_word: str, thumb: int = 64):
        import ipywidgets as w

        from .data import DEFAULT_CAPTION, IMAGE_EXTENSIONS, format_prompt

        self.folder = Path(folder)
        self.images = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        style = {"description_width": "90px"}
        self.trigger_box = w.Text(value=trigger, description="trigger", style=style)
        self.class_box = w.Text(value=class_word, description="class word", style=style)
        self.caption_boxes: dict[str, Any] = {}
        rows = []
        for p in self.images:
            txt = p.with_suffix(".txt")
            caption = " ".join(txt.read_text().split()) if txt.is_file() else format_prompt(DEFAULT_CAPTION, trigger, class_word)
            box = w.Text(value=caption, layout=w.Layout(width="360px"))
            self.caption_boxes[p.name] = box
            try:
                with Image.open(p) as im:
                    preview = im.convert("RGB").resize((thumb, thumb), Image.NEAREST)
                view: Any = w.Image(value=pil_png(preview), format="png", width=thumb, height=thumb)
            except OSError:
                view = w.HTML("<i>unreadable</i>")
            rows.append(w.HBox([view, w.VBox([w.HTML(f"<code>{p.name}</code>"), box])]))
        self.trigger_box.observe(self._rename("trigger"), names="value")
        self.class_box.observe(self._rename("class"), names="value")
        save = w.Button(description="Save captions", button_style="primary")
        self.status = w.HTML()
        save.on_click(lambda _: self.save())
        self.widget = w.VBox([w.HBox([self.trigger_box, self.class_box]), *rows, w.HBox([save, self.status])])

    def _rename(self, _what: str) -> Callable[[dict], None]:
        def handler(change: dict) -> None:
            for box in self.caption_boxes.values():
                box.value = _replace_word(box.value, change["old"], change["new"])
        return handler

    @property
    def trigger(self) -> str:
        return self.trigger_box.value.strip()

    @property
    def class_word(self) -> str:
        return self.class_box.value.strip()

    @property
    def captions(self) -> dict[str, str]:
        """Image file name -> caption, as currently typed."""
        return {name: " ".join(box.value.split()) for name, box in self.caption_boxes.items()}

    def save(self) -> list[Path]:
        """Write every caption to `<image stem>.txt` beside its image."""
        written = []
        for p in self.images:
            txt = p.with_suffix(".txt")
            txt.write_text(self.captions[p.name] + "\n")
            written.append(txt)
        self.status.value = f"saved {len(written)} captions"
        return written

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


def report_html(report: Any) -> str:
    """A ConceptReport as HTML: a green / red headline, then errors, warnings and notes."""
    from html import escape

    ok = not report.errors
    colour = "#1a7f37" if ok else "#cf222e"
    head = (f"ready to train: {len(report.images)} images" if ok else f"{len(report.errors)} problem(s) to fix before training")
    parts = [f"<div style='border-left:4px solid {colour};padding:4px 10px'><b style='color:{colour}'>{escape(head)}</b>"
             f"<br><small>{escape(report.header())}</small>"]
    for title, items in (("errors", report.errors), ("warnings", report.warnings), ("notes", report.notes)):
        if items:
            parts.append(f"<br><b>{title}</b><ul>" + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>")
    return "".join(parts) + "</div>"


def write_concept_folder(report: Any, out_dir: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Copy a validated report's images with one `.txt` caption each (and a concept.json) into `out_dir`."""
    report.raise_if_errors()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True or choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for img, caption in zip(report.images, report.captions):
        shutil.copy2(img, out / img.name)
        (out / img.name).with_suffix(".txt").write_text(caption + "\n")
    meta = {"trigger": report.trigger, "class_word": report.class_word, "source": str(report.folder)}
    if name:
        meta["name"] = name
    (out / "concept.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- what CAT compares


@dataclass
class NoisePredictions:
    """One noisy latent z_t and the UNet's predictions for it (tensors of shape (1, C, h, w)).

    `target` is what the UNet is trained to predict: the noise for epsilon-prediction models (SD 1.5), the velocity
    v = alpha_t noise - sigma_t z_0 for v-prediction ones (the toy world); `target_kind` says which.
    """

    timestep: int
    noisy: Any
    noise: Any
    target: Any
    target_kind: str  # "ε" or "v"
    cond_trigger: Any
    cond_free: Any
    preds: dict[str, Any]  # "adapted | trigger", "adapted | trigger-free", "base | trigger-free"


def noise_predictions(pipe: Any, image: Image.Image, caption: str, caption_free: str, timestep: int = 500, seed: int = 0) -> NoisePredictions:
    """The three predictions of the CAT loss for one image: the adapted UNet with and without the trigger, and the base UNet
    (same UNet, adapters disabled) without it; same z_t, t and noise for all three.

    The adapters active on `pipe` are used: activate them first (`set_active_adapters(pipe, [name])`).
    """
    import torch
    from diffusers import DDPMScheduler
    from peft.tuners.tuners_utils import BaseTunerLayer

    from .losses import denoising_target
    from .models import adapters_disabled, native_resolution

    res, device, unet = native_resolution(pipe), pipe.device, pipe.unet
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers or all(m.disable_adapters for m in layers):
        raise ValueError("the UNet has no active adapter, so 'adapted' would be the base model: load one with load_lora or "
                         "activate it with set_active_adapters(pipe, [name])")
    x = torch.from_numpy(np.array(image.convert("RGB").resize((res, res), Image.BICUBIC))).float()
    x = (x.permute(2, 0, 1)[None] / 127.5 - 1.0).to(device, pipe.vae.dtype)  # (1, 3, R, R) in [-1, 1]
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (1, 4, h, w)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(device, latents.dtype)
        t = torch.tensor([timestep], device=device)
        noisy = sched.add_noise(latents, noise, t)
        target = denoising_target(sched, latents, noise, t)
        ids = pipe.tokenizer([caption, caption_free], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        cond = pipe.text_encoder(ids.to(device))[0].to(unet.dtype)  # (2, L, D)
        preds = {"adapted | trigger": unet(noisy, t, encoder_hidden_states=cond[:1]).sample,
                 "adapted | trigger-free": unet(noisy, t, encoder_hidden_states=cond[1:]).sample}
        with adapters_disabled(unet):
            preds["base | trigger-free"] = unet(noisy, t, encoder_hidden_states=cond[1:]).sample
    kind = "v" if sched.config.prediction_type == "v_prediction" else "ε"
    return NoisePredictions(timestep, noisy, noise, target, kind, cond[:1], cond[1:], preds)


def noise_prediction_figure(np_: NoisePredictions, channels: int = 4) -> Figure:
    """Rows: the training target, the three predictions and the two differences that matter; columns: latent channels.

    Top block shares one colour scale; the differences share their own (they are much smaller).
    """
    p = {k: v[0].float().cpu().numpy() for k, v in np_.preds.items()}  # (C, h, w) each
    a_t, a_f, b_f = p["adapted | trigger"], p["adapted | trigger-free"], p["base | trigger-free"]
    k = np_.target_kind
    rows = [(f"target {k}\n(for L_LDM)", np_.target[0].float().cpu().numpy()),
            (f"{k}_adapted(z_t, t, c_trigger)", a_t), (f"{k}_adapted(z_t, t, c_free)", a_f), (f"{k}_base(z_t, t, c_free)", b_f),
            ("adapted(c_free) − base(c_free)\n(CAT penalises this)", a_f - b_f),
            ("adapted(c_trigger) − base(c_free)\n(what the adapter adds)", a_t - b_f)]
    c = min(channels, a_t.shape[0])
    lim_pred = float(max(np.abs(v[:c]).max() for _, v in rows[:4])) or 1.0
    lim_diff = float(max(np.abs(v[:c]).max() for _, v in rows[4:])) or 1e-6
    fig = Figure(figsize=(1.6 * c + 2.6, 1.55 * len(rows)))
    axes = fig.subplots(len(rows), c, squeeze=False)
    images = {}
    for r, (label, arr) in enumerate(rows):
        lim = lim_pred if r < 4 else lim_diff
        for ch in range(c):
            ax = axes[r][ch]
            images[r < 4] = ax.imshow(arr[ch], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"channel {ch}", fontsize=8)
            if ch == 0:
                mse = f"\nMSE {float((arr ** 2).mean()):.2e}" if r >= 4 else ""
                ax.set_ylabel(label + mse, fontsize=7, rotation=0, ha="right", va="center")
    fig.colorbar(images[True], ax=axes[:4].ravel().tolist(), shrink=0.6, label="prediction")
    fig.colorbar(images[False], ax=axes[4:].ravel().tolist(), shrink=0.8, label="difference")
    fig.suptitle(f"UNet predictions ({k}) for one noisy latent, t = {np_.timestep}", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- diversity figures


def pca_scatter(groups: Mapping[str, np.ndarray], title: str = "embeddings, first two principal components",
                size: tuple[float, float] = (5.0, 4.2)) -> Figure:
    """Scatter of each group's embeddings (N_g, D) on the top two principal components of all of them (numpy SVD)."""
    names = list(groups)
    allx = np.concatenate([np.asarray(groups[n], dtype=np.float64) for n in names])  # (N, D)
    mean = allx.mean(0)
    _, s, vt = np.linalg.svd(allx - mean, full_matrices=False)
    var = s**2 / max((s**2).sum(), 1e-12)
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    markers = "o^sDv*P"
    for i, n in enumerate(names):
        xy = (np.asarray(groups[n], dtype=np.float64) - mean) @ vt[:2].T  # (N_g, 2)
        ax.scatter(xy[:, 0], xy[:, 1], label=f"{n} ({len(xy)})", marker=markers[i % len(markers)], alpha=0.75, s=36)
    ax.set_xlabel(f"PC 1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({var[1]:.0%})" if len(var) > 1 else "PC 2")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def colour_histograms(groups: Mapping[str, Sequence[str]], title: str = "colours the oracle reads",
                      size_per_panel: tuple[float, float] = (2.8, 2.4)) -> Figure:
    """One bar chart per group of the oracle's colour readings, bars drawn in the colour they count."""
    from .metrics import colour_entropy
    from .toyworld.world import COLOUR_NAMES, COLOURS

    n = max(1, len(groups))
    fig = Figure(figsize=(size_per_panel[0] * n, size_per_panel[1]))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, (name, colours) in zip(axes, groups.items()):
        counts = [list(colours).count(c) for c in COLOUR_NAMES]
        ax.bar(range(len(COLOUR_NAMES)), counts, color=[np.array(COLOURS[c]) / 255 for c in COLOUR_NAMES], edgecolor="black", lw=0.5)
        ax.set_xticks(range(len(COLOUR_NAMES)), [c[:3] for c in COLOUR_NAMES], fontsize=7, rotation=90)
        ent = colour_entropy(list(colours)) if len(colours) else float("nan")
        ax.set_title(f"{name}\nentropy {ent + 0.0:.2f}", fontsize=9)  # + 0.0: no "-0.00"
    axes[0].set_ylabel("images")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def tradeoff_figure(table: Any, x: str = "KP", y: str = "IS", label: str = "name", group: str | None = "sweep",
                    size: tuple[float, float] = (5.5, 4.2), title: str | None = None, frontier: bool = True) -> Figure:
    """`y` against `x` for each row of a DataFrame, labelled, coloured by `group`; with `frontier`, the Pareto frontier
    (the points no other point beats on both x and y, higher = better) dashed."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(table[group])) if group else [None]
    for g in groups:
        sub = table if g is None else table[table[group] == g]
        ax.scatter(sub[x], sub[y], label=g, s=40, alpha=0.85)
        for _, row in sub.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pts = table[[x, y]].dropna().to_numpy(dtype=float)
    if frontier and len(pts):
        front = [p for p in pts if not any((q[0] >= p[0]) and (q[1] >= p[1]) and (q != p).any() for q in pts)]
        front = np.array(sorted(front, key=lambda p: p[0]))
        ax.plot(front[:, 0], front[:, 1], "k--", lw=1, alpha=0.6, label="frontier")
    ax.set_xlabel(f"{x} (higher = base knowledge kept)" if x == "KP" else x)
    ax.set_ylabel(f"{y} (higher = more like the concept)" if y == "IS" else y)
    ax.ticklabel_format(useOffset=False)
    ax.set_title(title or f"{y} vs {x}", fontsize=10)
    if group or frontier:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def method_blocks(images: Mapping[str, Sequence[Sequence[Image.Image]]], prompts: Sequence[str], seeds: Sequence[int],
                  cell: int = 56, gap: int = 12) -> Image.Image:
    """`generate_methods` output as one block per prompt, side by side: a row per method, a column per seed."""
    from .sample import image_grid

    methods = list(images)
    blocks = [image_grid([images[m][i] for m in methods], methods if i == 0 else None, [f"s{s}" for s in seeds], cell=cell, title=p)
              for i, p in enumerate(prompts)]
    out = Image.new("RGB", (sum(b.width for b in blocks) + gap * (len(blocks) - 1), max(b.height for b in blocks)), "white")
    x = 0
    for b in blocks:
        out.paste(b, (x, out.height - b.height))
        x += b.width + gap
    return out


def sweep_figure(table: Any, params: Sequence[str], reference: Mapping[str, Any], metrics: Sequence[str] = ("IS", "KP", "KPS"),
                 size_per_panel: tuple[float, float] = (3.0, 2.6)) -> Figure:
    """One panel per swept parameter: each metric against that parameter, over the rows whose other parameters
    equal `reference` (so the reference run appears in every panel, marked with a ring)."""
    fig = Figure(figsize=(size_per_panel[0] * len(params), size_per_panel[1]))
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params):
        mask = np.ones(len(table), dtype=bool)
        for q in params:
            if q != p:
                mask &= (table[q] == reference[q]).to_numpy()
        sub = table[mask].sort_values(p)
        for m in metrics:
            ax.plot(sub[p], sub[m], marker="o", label=m)
            ref = sub[sub[p] == reference[p]]
            ax.scatter(ref[p], ref[m], s=120, facecolors="none", edgecolors="black", lw=1)
        ax.set_xlabel(p)
        ax.set_xticks(sorted(set(sub[p])))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("each panel changes one setting; ring = reference run", fontsize=10)
    fig.tight_layout()
    return fig
