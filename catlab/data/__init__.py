"""Data: concept folders checked up front (`concepts`), caption text and the trigger-free caption (`captions`), and the
training dataset (`dataset`). With the models, the lowest layer above the foundation: sampling, training and
evaluation build on it, the demo on those.
"""
