"""The README cannot drift from the code: every `sh` and `python` block in it runs here as
written, in a fresh folder beside the repository's data (except a block marked
`<!-- not run: why -->`), and every `vitedge` command in them runs again with `--json`,
whose object must hold the keys docs/json.md documents for that command. Every command
of the CLI is documented there."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess

from tests.conftest import ROOT, run_cli

README = ROOT / "README.md"
JSON_DOC = ROOT / "docs" / "json.md"
DATA = ("calibration", "evaluation", "examples")


def fenced_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, code, why it is not run or None) of each fenced block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        marker = re.match(r"<!-- not run: (.+) -->", lines[i - 1].strip()) if i else None
        end = lines.index("```", i + 1)
        blocks.append((m.group(1), "\n".join(lines[i + 1:end]), marker.group(1) if marker else None))
        i = end + 1
    return blocks


def documented_keys() -> dict[str, list[str]]:
    """command -> the keys docs/json.md lists for it."""
    keys = {}
    for line in JSON_DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z-]+)` \| (.+) \|$", line)
        if m and m.group(1) not in ("artifact", "output", "seconds", "notes", "warnings",
                                    "skipped", "manifest", "verification"):
            keys[m.group(1)] = re.findall(r"`(\w+)`", m.group(2).split("(")[0])
    return keys


def commands(code: str) -> list[list[str]]:
    """The commands of an `sh` block, one per line, comments dropped."""
    return [shlex.split(line, comments=True) for line in code.splitlines()
            if shlex.split(line, comments=True)]


def test_every_command_is_documented_in_json_md():
    from vitedge.cli import cli

    assert set(cli.commands) <= set(documented_keys())


def test_the_readme_runs_as_written(tmp_path, capsys, monkeypatch):
    for name in DATA:
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    keys = documented_keys()
    blocks = [b for b in fenced_blocks(README.read_text()) if b[0] in ("sh", "python")]
    assert any(b[2] is None for b in blocks)
    ran: set[str] = set()
    for language, code, why_not in blocks:
        if why_not is not None:
            continue
        if language == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
            continue
        for argv in commands(code):
            if argv[0] != "vitedge":
                subprocess.run(argv, check=True, cwd=tmp_path)
                continue
            code_, out, err = run_cli(argv[1:], capsys)
            assert code_ == 0, f"{shlex.join(argv)}: {err}"
            again = [f"json-{a}" if prev in ("-o", "--output") else a  # outputs of its own
                     for prev, a in zip(argv[:-1], argv[1:], strict=True)]
            code_, out, err = run_cli([*again, "--json"], capsys)
            assert code_ == 0, f"{shlex.join(argv)} --json: {err}"
            data = json.loads(out)
            assert isinstance(data, dict), argv
            command = argv[1]
            wanted = keys[command] if len(argv) == 2 or command != "profiles" else \
                ["name", "backend", "precision", "batch", "notes"]
            missing = [k for k in wanted if k not in data]
            assert not missing, f"{shlex.join(argv)} --json lacks {missing}"
            ran.add(command)
    from vitedge.cli import cli

    untried = set(cli.commands) - ran - {"serve"}  # serve's JSON line: tests/test_serve.py
    assert not untried, f"the README's tour runs no {sorted(untried)}"
    assert os.listdir(tmp_path)  # the tour wrote its files here, not in the repository
