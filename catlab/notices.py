"""Library notices: keep the terminal to catlab's own progress and results.

diffusers, transformers and peft print notices meant for their developers: one "No LoRA keys associated to
CLIPTextModel" per UNet-only adapter loaded, loading bars per model, "Already found a peft_config" per extra adapter.
`quiet_libraries()` lowers them to errors for a block (the demo, evaluation sweeps); what matters is said once, in
catlab's words, by the caller.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

# notices that are expected in catlab's normal use and say nothing to a user
EXPECTED = (
    "No LoRA keys associated to CLIPTextModel",  # a UNet-only adapter: the text encoder is the base model's by design
    "Already found a `peft_config` attribute",  # several adapters in one model: how methods are compared on one pipeline
    "should be kept in float32",  # mixed precision casts frozen weights on purpose (train.py)
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in EXPECTED)


@contextmanager
def expected_notices_dropped() -> Iterator[None]:
    """Inside the block: the EXPECTED notices are not printed (other notices are)."""
    drop = _DropExpected()
    handlers = logging.getLogger("diffusers").handlers  # diffusers' own stderr handler: its children propagate to it
    for h in handlers:
        h.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for text in EXPECTED:
                warnings.filterwarnings("ignore", message=f".*{text}.*")
            yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Inside the block: library log levels at ERROR, their loading bars off, the expected warnings ignored."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with expected_notices_dropped():
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def quiet_until_restored() -> Callable[[], None]:
    """`quiet_libraries()` for a notebook kernel: on from now until the returned function is called (it may be called
    more than once). `setup_notebook` keeps it as `wb.restore_notices`."""
    stack = ExitStack()
    stack.enter_context(quiet_libraries())
    return stack.close
