"""Training: the objectives (`losses`: denoising, CAT, DreamBooth prior preservation), the state of one training run
(`state`), the loop (`loop`: `train`), and pickle-free checkpoints (`checkpoints`).
"""
