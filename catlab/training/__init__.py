"""Training: the objectives (`losses`: denoising, CAT, DreamBooth prior preservation), the state of one training run
(`state`), how a run starts (`start`: data, frozen base model, adapters, optimiser, resume), the loop (`loop`:
`train`), its sample grids (`validation`), and pickle-free checkpoints (`checkpoints`).
"""
