"""The commands of README.md and docs/*.md work as written.

- A fenced ``bash`` block preceded by ``<!-- test: run -->`` is run verbatim (bash, stop at the first
  failing command) on a small folder of real photos: README's own-photos example.
- Every other ``python tools/<tool>.py ...`` command of a ``bash`` block is parsed by the tool's own
  argument parser, and, when it names a ``--config-file``, the config is loaded with the command's
  ``key=value`` overrides and checked (``setup_config``: unknown keys, wrong types) without running
  anything; ``tools/submit.py`` commands check the tool command they wrap the same way.
- Every repository path (``configs/...``, ``tools/...``, ``benchmarks/...``, ...), relative link and
  ``d2ssl.<module>[.<name>]`` a page mentions exists.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
RUN_MARKER = "<!-- test: run -->"


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    run: bool  # preceded by RUN_MARKER

    def where(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            blocks.append(Block(page, i + 1, lines[i][3:].strip(), "\n".join(lines[i + 1 : end]),
                                previous == RUN_MARKER))
            i = end
        i += 1
    return blocks


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of each command of a bash block: continuation lines joined, comments dropped."""
    out, pending, first = [], "", 0
    for offset, line in enumerate(block.text.split("\n"), start=block.line + 1):
        if not pending:
            first = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        if argv:
            out.append((first, argv))
    return out


ALL_BLOCKS = [b for page in PAGES for b in fenced_blocks(page)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.run]
TOOL_COMMANDS = [
    pytest.param(argv, id=f"{b.where()}+{line - b.line}")
    for b in ALL_BLOCKS if b.lang == "bash" and not b.run
    for line, argv in commands(b) if argv[:2] != ["python", "-m"] and argv[0] == "python"
]


def test_the_pages_hold_commands_to_check():
    # The checks below are only as good as the extraction: the README example and the docs' commands.
    assert len(RUN_BLOCKS) == 1 and RUN_BLOCKS[0].page.name == "README.md"
    assert len(TOOL_COMMANDS) >= 20
    assert {p.name for p in PAGES} >= {"README.md", "getting_started.md", "methods.md", "evaluation.md",
                                      "transfer.md", "scale_and_slurm.md", "reliability.md",
                                      "performance.md", "recipes.md"}


# --- parsing every tool command without running it ------------------------------------------------

class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def parse_tool_command(argv: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace ``argv`` (``python tools/x.py ...``) parses to, through the tool's own parser:
    the tool runs as ``__main__`` until its first ``parse_args``/``parse_intermixed_args`` returns."""
    script = REPO_ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    for name in ("parse_args", "parse_intermixed_args"):
        original = getattr(argparse.ArgumentParser, name)

        def stop_after(self, args=None, namespace=None, _original=original):
            raise _Parsed(_original(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, name, stop_after)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{argv[1]} never parsed its arguments")


def check_tool_command(argv: list[str], monkeypatch) -> None:
    from d2ssl.engine.train_loop import setup_config

    args = parse_tool_command(argv, monkeypatch)
    if getattr(args, "config_file", None):
        setup_config(str(REPO_ROOT / args.config_file), list(getattr(args, "opts", [])))
    if argv[1] == "tools/submit.py":  # the wrapped tool command, checked the same way
        check_tool_command(["python", f"tools/{args.tool}.py", *args.tool_args], monkeypatch)


@pytest.mark.parametrize("argv", TOOL_COMMANDS)
def test_documented_command_parses_and_its_config_and_overrides_load(argv, monkeypatch):
    if argv[1].startswith("benchmarks/"):
        assert (REPO_ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    assert argv[1].startswith("tools/"), f"unexpected command {shlex.join(argv)}"
    try:
        check_tool_command(argv, monkeypatch)
    except SystemExit as e:  # argparse's error (printed above)
        raise AssertionError(f"{shlex.join(argv)}: the tool's parser refused it (exit {e.code})") from e


def test_the_parse_check_catches_a_bad_override_and_a_bad_flag(monkeypatch):
    from d2ssl.config import ConfigError

    with pytest.raises((ConfigError, KeyError), match="no_such_key"):
        check_tool_command(["python", "tools/train_net.py", "--config-file", "configs/tiny/rotnet.py",
                            "train.no_such_key=1"], monkeypatch)
    with pytest.raises(SystemExit):
        check_tool_command(["python", "tools/convert_checkpoint.py", "a.pth", "b.pkl", "--to", "caffe"],
                           monkeypatch)
    with pytest.raises((ConfigError, KeyError), match="no_such_key"):
        check_tool_command(["python", "tools/submit.py", "--dry-run", "train_net", "--config-file",
                            "configs/tiny/rotnet.py", "train.no_such_key=1"], monkeypatch)


# --- paths, links and module names the pages mention ----------------------------------------------

# A file (with an extension) or a folder (a trailing slash); "d2ssl/detectron2 layout" is prose.
PATH = re.compile(r"(?<![\w./-])((?:configs|tools|benchmarks|scripts|tests|d2ssl|docs)/[\w.*/-]*(?:\.\w+|/))")
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOTTED = re.compile(r"(?<![\w./-])(d2ssl(?:\.\w+)+)")


def _slug(heading: str) -> str:
    # GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_link_and_module_a_page_mentions_exists(page):
    text = page.read_text()
    missing = []
    for path in sorted(set(PATH.findall(text))):
        path = path.split(":")[0]
        if not (glob.glob(str(REPO_ROOT / path)) or (REPO_ROOT / path).exists()):
            missing.append(path)
    for link in sorted(set(LINK.findall(text))):
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            missing.append(link)
        elif anchor and anchor not in {_slug(line.lstrip("#")) for line in file.read_text().split("\n")
                                       if line.startswith("#")}:
            missing.append(link)
    for dotted in sorted(set(DOTTED.findall(text))):
        parts = dotted.split(".")
        module, rest = None, []
        for n in range(len(parts), 0, -1):
            try:
                module, rest = importlib.import_module(".".join(parts[:n])), parts[n:]
                break
            except ModuleNotFoundError:
                continue
        obj = module
        for name in rest:
            obj = getattr(obj, name, None)
        if obj is None:
            missing.append(dotted)
    assert not missing, f"{page.relative_to(REPO_ROOT)} mentions what does not exist: {missing}"


# --- README's own-photos example, verbatim ---------------------------------------------------------

CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker", 9: "boot"}  # Fashion-MNIST labels -> folder names


def photo_folder(root: Path, fashion_mnist_train: list[dict]) -> Path:
    """``root/train/<class>/`` with 12 real photos of each of 4 classes and ``root/test/<class>/`` with 4
    others, as PNG files: the layout the README asks for, at the smallest size that shows the path."""
    from PIL import Image

    counts = dict.fromkeys(CLASSES, 0)
    for d in fashion_mnist_train:
        label = d["label"]
        if label in counts and counts[label] < 16:
            split = "train" if counts[label] < 12 else "test"
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(d["image"]).save(folder / f"{d['image_id']}.png")
            counts[label] += 1
        if min(counts.values()) == 16:
            return root
    raise AssertionError(f"Fashion-MNIST has too few images of classes {CLASSES}")


def test_readme_own_photos_example_runs_verbatim(tmp_path, fashion_mnist_train):
    block = RUN_BLOCKS[0]
    photos = photo_folder(tmp_path / "photos", fashion_mnist_train)
    # The example's relative paths (.venv, tools/, configs/, output/) resolve in a scratch copy of the
    # repository's root, so its output/ folder lands in tmp_path.
    work = tmp_path / "repo"
    work.mkdir()
    for name in (".venv", "tools", "configs"):
        (work / name).symlink_to(REPO_ROOT / name)
    if not (REPO_ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv (run scripts/setup_env.sh)")
    env = dict(os.environ, PHOTOS=str(photos), PYTHONWARNINGS="ignore")
    result = subprocess.run(["bash", "-e", "-c", block.text], cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{block.where()}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    reported = re.findall(r"test top-1 of that classifier on test: ([\d.]+)", result.stdout)
    assert len(reported) == 2, result.stdout[-3000:]  # the pretrained trunk's and the random trunk's
    assert all(0.0 <= float(x) <= 100.0 for x in reported)
    assert (work / "output/my_photos/rotnet/model_final.pth").is_file()
    assert (work / "output/my_photos/rotnet_d2.pkl").stat().st_size > 0
