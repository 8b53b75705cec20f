"""Prompt templates for real base models: what `catlab eval` draws when the base is not the toy world.

The toy world's templates (catlab.evaluation) name backgrounds and colours it can draw; a photo-trained model such
as SD 1.5 is asked what DreamBooth's benchmark asks of object concepts instead.
"""

from __future__ import annotations

# A subset of DreamBench's object prompts (Ruiz et al. 2023, arXiv 2208.12242, dataset/prompts_and_classes.txt):
# three recontextualisations, two property changes and the plain prompt. Each is also drawn without its trigger
# ("a {class} on the beach"), which is what knowledge preservation compares with the base model.
REAL_WORLD_TEMPLATES = (
    "a {trigger} {class}",
    "a {trigger} {class} in the jungle",
    "a {trigger} {class} on the beach",
    "a {trigger} {class} on a cobblestone street",
    "a red {trigger} {class}",
    "a shiny {trigger} {class}",
)
