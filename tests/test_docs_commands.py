"""Every `catlab ...` command line that README.md and docs/*.md show in a code block parses with the real parser, and
every `catlab train` line also builds its config the way `catlab train` does, so a documented command never fails on
its own spelling (README's `--set learning_rate=1e-4` once did: YAML 1.1 reads 1e-4 as a string). Nothing trains or
samples. A line added to the docs later is picked up by the next run; hub ids become the toy world and the config
file is the docs' own run.yaml. Every YAML block the docs show is a valid run config too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HUB_ID = re.compile(r"^stable-diffusion-v1-5/\S+$")  # the documented SD 1.5 base; the tests never download it


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line in a fenced or indented code block, continuation lines (`\\`) joined."""
    out, fenced, indented, previous_blank, pending, start = [], False, False, True, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, previous_blank = not fenced, False
            continue
        if not fenced:  # Markdown's indented block: 4 spaces after a blank line, until a line that is not indented
            blank, indent = not line.strip(), line.startswith(("    ", "\t"))
            indented = (indented and (blank or indent)) or (previous_blank and indent and not blank)
            previous_blank = blank
        if not (fenced or indented) or not line.strip():
            continue
        start = start or n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line.strip()))
        pending, start = "", 0
    return out


def catlab_argv(line: str) -> list[str] | None:
    """The arguments a shell line hands to catlab (`catlab ...`, `.venv/bin/catlab ...`, `... -m catlab.cli ...`),
    after `&&` / `;` and environment assignments; None when the line does not run catlab."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # not shell (Python, YAML)
        return None
    command: list[str] = []
    for word in [*words, "&&"]:
        if word not in ("&&", ";", "||", "|"):
            command.append(word)
            continue
        while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
            command.pop(0)
        if command and (command[0] == "catlab" or command[0].endswith("/catlab")):
            return command[1:]
        if "-m" in command and command[command.index("-m") + 1 : command.index("-m") + 2] == ["catlab.cli"]:
            return command[command.index("-m") + 2 :]
        command = []
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file:line, catlab arguments) for every documented catlab command line."""
    found = []
    for doc in DOC_FILES:
        for n, line in code_lines(doc.read_text()):
            argv = catlab_argv(line)
            if argv is not None:
                found.append((f"{doc.relative_to(ROOT)}:{n}", argv))
    return found


COMMANDS = documented_commands()


def documented_run_yaml() -> str:
    """The run.yaml that docs/training.md shows (the block that starts with `# run.yaml`)."""
    text = (ROOT / "docs" / "training.md").read_text()
    match = re.search(r"```yaml\n# run\.yaml\n(.*?)```", text, re.S)
    assert match, "docs/training.md no longer shows a `# run.yaml` block; the commands below run against it"
    return match.group(1)


def runnable(argv: list[str], config: Path) -> list[str]:
    """The documented arguments with the hub's SD 1.5 replaced by the toy world and the config by a real file."""
    out = []
    for i, word in enumerate(argv):
        if i and argv[i - 1] == "--config":
            word = str(config)
        elif HUB_ID.match(word):
            word = "toyworld"
        elif word.startswith("base_model=") and HUB_ID.match(word.split("=", 1)[1]):
            word = "base_model=toyworld"
        out.append(word)
    return out


def test_the_docs_show_the_commands_this_test_is_for():
    """The extraction itself works: README's SD 1.5 lines (continuation lines joined) and the docs' train lines."""
    where = {w for w, _ in COMMANDS}
    lines = [" ".join(a) for _, a in COMMANDS]
    assert any("learning_rate=1e-4" in line and "mixed_precision=fp16" in line for line in lines), lines
    assert any(a[:1] == ["eval"] and "--embedder" in a for _, a in COMMANDS), lines
    assert any(w.startswith("docs/training.md") for w in where) and any(w.startswith("README.md") for w in where)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses_and_builds_its_config(where, argv, tmp_path):
    from catlab.cli.commands import train_config
    from catlab.cli.parser import build_parser
    from catlab.config import TrainConfig, load_yaml

    config = tmp_path / "run.yaml"
    config.write_text(documented_run_yaml())
    args_list = runnable(argv, config)
    if "--help" in args_list or "-h" in args_list:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(args_list)
        assert e.value.code == 0, where
        return
    args = build_parser().parse_args(args_list)
    assert args.command == argv[0], where
    if args.command == "train":
        cfg = train_config(args)
        assert isinstance(cfg, TrainConfig)
        for pair in args.set:  # each --set reached the config as the value it spells: 1e-4 is a float
            key, value = pair.split("=", 1)
            assert getattr(cfg, key) == load_yaml(value), f"{where}: --set {pair} gave {getattr(cfg, key)!r}"


def test_code_lines_joins_continuations_and_skips_prose():
    text = (
        "Run\n\n```bash\ncatlab train --config a.yaml \\\n   --set rank=2   # comment\n```\n"
        "see `catlab demo`\n\n    catlab demo --quick\n"
    )
    lines = code_lines(text)
    argvs = [catlab_argv(line) for _, line in lines]
    assert argvs == [["train", "--config", "a.yaml", "--set", "rank=2"], ["demo", "--quick"]]
    assert [n for n, _ in lines] == [4, 9]


def test_catlab_argv_finds_catlab_after_set_up_and_in_accelerate_launch():
    assert catlab_argv("bash scripts/bootstrap.sh && .venv/bin/catlab demo") == ["demo"]
    assert catlab_argv("CATLAB_DEBUG=1 catlab eval --seeds 2") == ["eval", "--seeds", "2"]
    launched = catlab_argv("accelerate launch --multi_gpu -m catlab.cli train --config run.yaml")
    assert launched == ["train", "--config", "run.yaml"]
    assert catlab_argv("python benchmarks/headline.py --out x   # = catlab demo") is None
    assert catlab_argv("cfg = TrainConfig.sd15(concepts=[ConceptConfig('my_teapot/', 'sks', 'teapot')])") is None


def documented_configs() -> list[tuple[str, str]]:
    """(file:line, text) of every ```yaml block in the docs: each is a run config or a part of one."""
    found = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            found.append((f"{doc.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1}", match.group(1)))
    return found


@pytest.mark.parametrize("where, text", documented_configs(), ids=[w for w, _ in documented_configs()])
def test_documented_config_block_is_a_valid_config(where, text):
    """What the docs show in a YAML block loads as `catlab train --config` loads it (numbers like 1e-4 included)."""
    from catlab.config import TrainConfig, load_yaml

    fields = load_yaml(text)
    assert isinstance(fields, dict) and fields, where
    cfg = TrainConfig.from_dict(fields)
    for key, value in fields.items():
        if key != "concepts":
            assert getattr(cfg, key) == value, f"{where}: {key}"
