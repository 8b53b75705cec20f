"""Evaluation: embedders behind one interface (`embedders`), pure scores on embeddings and oracle readings
(`metrics`), per-image scoring and summaries (`scoring`), and the protocol that generates, caches and scores the
images of the base model and each adapter on the same prompts x seeds (`protocol`: `evaluate`).
"""
