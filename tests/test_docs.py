"""The commands that README.md and docs/*.md show must work: every `python SCRIPT.py ...` (also under torchrun,
in a variable or behind eval) parses with that script's own argparse, every `bash SCRIPT.sh` exists, and the
quickstart's commands, which run on the bundled sample, are quickstart.sh's and actually run."""

import argparse
import glob
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

# Run as bash, but with python, torchrun and bash recording their arguments (one \x1f-separated line each) instead
# of running: variables, `P="python pretrain.py ..."; $P --input ...` and eval expand as they would for a user, and
# each prints 1, so that `S=$(python -c ...)` gives a number to the flags that take one.
RECORDER = r"""
record() { local IFS=$'\x1f'; printf '%s\n' "$*" >> "$COMMANDS"; echo 1; }  # one write: jobs run with & too
python() { record python "$@"; }
python3() { record python "$@"; }
torchrun() { record torchrun "$@"; }
bash() { record bash "$@"; }
"""


def shell_blocks(path):
    """The ```bash / ```sh code blocks of a markdown file, as (first line number, text)."""
    with open(path, encoding="utf-8") as f:
        blocks, lines = [], f.read().split("\n")
    i = 0
    while i < len(lines):
        if re.match(r"^```(bash|sh|shell)\s*$", lines[i].strip()):
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            blocks.append((i + 2, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return blocks


def recorded_commands(script, tmp_path):
    """The argv of each python / torchrun / bash command a shell script runs (in an empty folder, so nothing it
    writes lands in the repository)."""
    log = tmp_path / "commands"
    log.write_bytes(b"")
    path = tmp_path / "block.sh"
    path.write_text(RECORDER + script + "\nwait\n", encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    subprocess.run(
        ["bash", str(path)],
        check=False,
        cwd=cwd,
        env={**os.environ, "COMMANDS": str(log)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    return [line.split("\x1f") for line in log.read_text(encoding="utf-8").splitlines() if line]


class Parsed(Exception):
    pass


def check_parses(script, argv, monkeypatch):
    """Run the script's main() up to its argparse call: the flags and their values must be accepted."""

    def parse_args(self, args=None, namespace=None):
        raise Parsed(real_parse_args(self, args, namespace))

    real_parse_args = argparse.ArgumentParser.parse_args
    module = importlib.import_module(script[: -len(".py")])
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        m.setattr(sys, "argv", [script, *argv])
        with pytest.raises(Parsed):
            module.main(argv) if inspect.signature(module.main).parameters else module.main()


def all_commands(tmp_path):
    """(file:line of the block, argv) of every command. A page's blocks run in one shell, top to bottom, as a reader
    runs them: a variable set in one block is there in the next."""
    commands = []
    for path in DOCS:
        script = "".join(f"record '#block' {line}\n{block}\n" for line, block in shell_blocks(path))
        for argv in recorded_commands(script, tmp_path):
            if argv[0] == "#block":
                where = f"{os.path.relpath(path, ROOT)}:{argv[1]}"
            else:
                commands.append((where, argv))
    return commands


def test_every_documented_command_parses(tmp_path, monkeypatch, capsys):
    commands = all_commands(tmp_path)
    scripts = {argv[1] for _, argv in commands if argv[0] == "python" and argv[1].endswith(".py")}
    assert {"vocab.py", "data.py", "pretrain.py", "train.py", "predict.py", "export.py"} <= scripts, scripts
    checked = 0
    for where, argv in commands:
        if argv[0] == "bash":
            assert os.path.exists(os.path.join(ROOT, argv[1])), f"{where}: {' '.join(argv)}: no such script"
            continue
        if argv[0] == "python" and argv[1] in ("-m", "-c"):
            continue  # python -m pytest, python -c "..."
        script = next((a for a in argv if a.endswith(".py")), None)
        assert script and os.path.exists(os.path.join(ROOT, script)), f"{where}: {' '.join(argv)}: no such script"
        try:
            check_parses(script, argv[argv.index(script) + 1 :], monkeypatch)
        except (SystemExit, Exception) as e:  # noqa: BLE001 (argparse exits with 2 on a bad flag; any error counts)
            err = capsys.readouterr().err.strip().splitlines()
            raise AssertionError(f"{where}: {' '.join(argv)}: {err[-1] if err else e!r}") from None
        checked += 1
    assert checked >= 30, checked


def test_a_wrong_flag_in_the_docs_would_fail(tmp_path, monkeypatch):
    """The negative control: a misspelt flag and a bad value are caught."""
    for argv in (["--epochs", "3"], ["--epoch", "three"]):
        with pytest.raises(SystemExit):
            check_parses("pretrain.py", argv, monkeypatch)
    commands = recorded_commands('P="python train.py --lr 3e-4"; $P --batch 64', tmp_path)
    assert commands == [["python", "train.py", "--lr", "3e-4", "--batch", "64"]]


def quickstart_commands(text):
    """The stage commands: each `python ...` line with its continuation lines, whitespace collapsed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(line.split()) for line in joined.split("\n") if line.strip().startswith("python ")]


def test_readme_quickstart_is_what_quickstart_sh_runs_and_it_runs(tmp_path):
    readme = next(b for _, b in shell_blocks(DOCS[0]) if "python vocab.py --input data/sample/" in b)
    with open(os.path.join(ROOT, "quickstart.sh"), encoding="utf-8") as f:
        script = f.read()
    shown = quickstart_commands(readme)
    assert len(shown) == 5 and shown == quickstart_commands(script)
    # the stages as the README shows them, on the bundled sample; the environment is already set up here
    out = tmp_path / "quickstart"
    env = {**os.environ, "SKIP_SETUP": "1", "PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", os.path.join(ROOT, "quickstart.sh"), str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", r.stdout).group(1))
    assert accuracy > 0.7, r.stdout  # a 2-layer model from one epoch of pretraining on 3 MB gets about 0.78-0.80
    assert re.search(r"^(positive|negative)\t", r.stdout, re.MULTILINE), r.stdout
    assert (out / "save_best.pth").exists() and (out / "train" / "accuracy.svg").exists()
