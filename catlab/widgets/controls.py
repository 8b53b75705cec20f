"""Widgets over plain values: `ParamPanel` (a notebook's parameters as widgets, with buttons), `slider_view` (an image
redrawn from a slider) and `LiveTrainingMonitor` (a TrainCallback that draws the loss curve and validation grids).
ipywidgets is imported only when a widget is built.
"""

from __future__ import annotations

import ast
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from catlab.training.callbacks import TrainCallback, TrainResult
from catlab.widgets.figures import fig_png, loss_figure, pil_png

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
    return w.Text(
        value="" if value is None else repr(value), placeholder="None", description=name, style=style, layout=layout
    )


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

    def __init__(
        self, values: Mapping[str, Any], options: Mapping[str, Sequence] | None = None, title: str | None = None
    ):
        import ipywidgets as w

        self.defaults = dict(values)
        self._literal = {
            k for k, v in values.items() if not isinstance(v, (bool, int, float, str)) and k not in (options or {})
        }
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


def slider_view(
    render: Callable[[float], Image.Image],
    value: float,
    min: float = 0.0,
    max: float = 1.5,
    step: float = 0.25,
    description: str = "scale",
):
    """A FloatSlider above an image; `render(value)` draws the image now and again whenever the slider is released."""
    import ipywidgets as w

    slider = w.FloatSlider(
        value=value,
        min=min,
        max=max,
        step=step,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )  # the whole description, not cut at 80 px
    view, status = w.Image(format="png"), w.HTML()

    def update(change: Any = None) -> None:
        status.value = f"<i>drawing {description} = {slider.value:g} …</i>"
        try:
            view.value = pil_png(render(slider.value))
        except Exception as e:  # an observer's exception goes to the kernel's log, where nobody looks: say it here
            status.value = (
                f"<b>could not draw {description} = {slider.value:g}</b>: {type(e).__name__}: {html.escape(str(e))}"
            )
            raise
        status.value = f"{description} = {slider.value:g}"

    slider.observe(update, names="value")
    update()
    # flex-start: a VBox stretches its children to its width, which would blow the image up (blurred) to the page width
    return w.VBox([slider, status, view], layout=w.Layout(align_items="flex-start"))


# ----------------------------------------------------------------------------- training monitor


class LiveTrainingMonitor(TrainCallback):
    """A TrainCallback that redraws the loss curve every `every` steps and shows each validation grid.

    Display it (`display(monitor)`) before training. At the end a summary line is printed and, with `show_final`, the
    final loss figure and sample grid are shown as plain outputs (they stay in a saved notebook and in headless runs,
    where widgets show nothing) and the live views are hidden, so that a live notebook does not show them twice.
    """

    def __init__(self, total_steps: int, every: int = 5, title: str = "training", show_final: bool = True):
        import ipywidgets as w

        self.total_steps, self.every, self.title, self.show_final = total_steps, max(1, every), title, show_final
        self.history: list[dict] = []
        self.grids: list[tuple[int, Image.Image]] = []
        self.status = w.HTML(f"<b>{title}</b>: waiting for the first step")
        self.loss_view = w.Image(format="png")
        self.grid_view = w.Image(format="png")
        self.views = w.HBox([self.loss_view, self.grid_view], layout=w.Layout(align_items="flex-start"))
        self.widget = w.VBox([self.status, self.views])

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
        from catlab.sampling.grids import image_grid

        grid = image_grid(list(images.values()), row_labels=list(images), cell=64, title=f"step {step}")
        self.grids.append((step, grid))
        self.grid_view.value = pil_png(grid)

    def on_end(self, result: TrainResult) -> None:
        from IPython.display import display

        if result.reused:  # nothing ran: show what the finished run recorded
            self.history = list(result.history)
            self.grids = _saved_validation_grids(result.output_dir)
        self.loss_view.value = fig_png(self.figure(), dpi=80)
        last = self.history[-1] if self.history else {}
        terms = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "ldm", "cat", "prior") if k in last)
        took = "reused, trained earlier" if result.reused else f"in {result.wall_time_s:.1f} s"
        line = f"{self.title}: {len(self.history)} steps {took} ({terms}); adapter: {result.adapter_dir}"
        print(line)
        if self.show_final:
            self.views.layout.display = "none"  # the same curve and grid follow as plain outputs
            self.status.value = (
                f"<b>done</b> — {self.title}: {len(self.history)} steps; the final loss curve and sample grid are below"
            )
            display(self.figure())
            if self.grids:
                display(self.grids[-1][1])
        else:
            self.status.value = f"<b>done</b> — {line}"


def _saved_validation_grids(run_dir: Path) -> list[tuple[int, Image.Image]]:
    """The validation grids a run wrote (validation/step-NNNNNN.png), oldest first."""
    grids = []
    for png in sorted((Path(run_dir) / "validation").glob("step-*.png")):
        with Image.open(png) as im:
            grids.append((int(png.stem.split("-")[1]), im.convert("RGB")))
    return grids
