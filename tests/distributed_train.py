"""Run by tests/test_several_processes.py under `accelerate launch` (two CPU processes, gloo): trains every config of a
JSON spec in one process group, so the interpreters start once, and records which class images each process drew.

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_train.py spec.json   # ACCELERATE_USE_CPU=true
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from lora_helpers import inject_text_encoder_lora

import catlab.sampling.sampler as sampler
from catlab.config import TrainConfig
from catlab.training.loop import train


def main(spec_path: str) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    spec = json.loads(Path(spec_path).read_text())
    inject_text_encoder_lora(perturb=0.05)  # as the test's single-process runs
    drawn, real = [], sampler.generate

    def recording_generate(pipe, prompts, seeds, **kw):
        drawn.extend(int(s) for s in seeds)
        return real(pipe, prompts, seeds, **kw)

    sampler.generate = recording_generate
    for cfg in spec["runs"]:
        train(TrainConfig.from_dict(cfg), progress=False)
    rank = int(os.environ.get("RANK", "0"))
    (Path(spec["out"]) / f"drawn_rank{rank}.json").write_text(json.dumps(drawn))


if __name__ == "__main__":
    main(sys.argv[1])
