"""The `train`, `sample` and `toyworld` commands: a config from a file and `--set`, a grid of samples, the toy
world's assets."""

from __future__ import annotations

from pathlib import Path


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    from catlab.config import load_yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = load_yaml(v)  # as in a config file: 1e-4 is a number
        except yaml.YAMLError as e:
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({' '.join(str(e).split())})") from e
    return out


def train_config(args):
    from catlab.config import TrainConfig, load_config

    cfg = load_config(args.config)
    if args.set:
        try:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **parse_overrides(args.set)})
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("--set") else f"--set: {e}") from e
    return cfg


def check_adapter(path: str) -> None:
    """Before any model loads: the adapter a command names exists."""
    from catlab.models import LORA_WEIGHT_NAME

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"adapter {p} does not exist; pass the adapter folder of a run (output_dir/adapter) or a .safetensors file"
        )
    if p.is_dir() and not (p / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(f"no {LORA_WEIGHT_NAME} in {p}; pass the adapter folder of a run (output_dir/adapter)")


def run_toyworld(args) -> int:
    from catlab.toyworld import world

    if args.toyworld_cmd == "pretrain":
        from catlab.toyworld.pretrain import PretrainConfig, pretrain

        cfg = PretrainConfig.tiny() if args.quick else PretrainConfig()
        cfg.seed = args.seed
        cfg.stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = sorted(set(cfg.stages) - set(PretrainConfig.stages))
        if unknown:
            raise SystemExit(
                f"catlab: error: --stages: unknown stage(s) {unknown}; choose from {', '.join(PretrainConfig.stages)}"
            )
        out = pretrain(args.out, cfg)
        print(f"toy world written to {out}")
    elif args.toyworld_cmd == "export-concept":
        try:
            world.toy_concept(args.name)
        except ValueError as e:
            raise SystemExit(f"catlab: error: {e}") from None
        out = world.export_concept(args.name, args.out, overwrite=args.overwrite)
        print(f"concept {args.name} written to {out}")
    elif args.toyworld_cmd == "concepts":
        for c in [*world.CONCEPTS.values(), *world.HELD_OUT_CONCEPTS.values()]:
            held_out = "  (held out: the oracle was not trained on it)" if c.name in world.HELD_OUT_CONCEPTS else ""
            print(
                f"{c.name:18s} trigger={c.trigger:4s} class={c.class_word:8s} {c.colour}/{c.second_colour} {c.pattern}"
                + held_out
            )
    elif args.toyworld_cmd == "check":
        from catlab.toyworld.assets import asset_root, load_oracle, toyworld_path

        for part in ("pipeline", "clip", "oracle"):
            print(f"{part:9s} {toyworld_path(part)}")
        load_oracle()
        print(f"all toy-world assets present in {asset_root()}")
    return 0


def run_sample(args) -> int:
    """`catlab sample`: one row per prompt, one column per seed."""
    from catlab.files import save_image_atomic
    from catlab.models import load_for_sampling, load_lora
    from catlab.sampling.grids import image_grid
    from catlab.sampling.sampler import generate

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"catlab: error: {out} exists; choose another --out (nothing is overwritten)")
    pipe = load_for_sampling(args.base)  # on the GPU if there is one, in half precision there
    if args.adapter:
        load_lora(pipe, args.adapter, "adapter", scale=args.scale)
    seeds = list(range(args.seeds))
    images = generate(
        pipe,
        args.prompts,
        seeds,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        batch_size=args.batch_size,
        unconditional=args.unconditional,
    )
    grid = image_grid(images, row_labels=args.prompts, col_labels=[f"seed {s}" for s in seeds])
    save_image_atomic(grid, out)
    print(f"wrote {out}")
    return 0
