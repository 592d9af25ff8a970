"""The docs stay true to the code: every `lst-data ...` / `lst-model ...` command line in
README.md and docs/*.md parses with the real CLI, and docs/ingest.md's reject-code table
is the registry's (`lst_data.core.rejects.reject_codes_markdown`).

Command lines are parsed, never run: each one's subcommand chain is resolved and its
arguments go through click's `make_context`, which checks that the command and every
option exist and that the required arguments are there.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from lst_data.core.rejects import reject_codes_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("lst-data", "lst-model")

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
# A command may follow a prompt (`$ `) or start as `torchrun [flags] -m lst_model.cli`.
PROMPT = re.compile(r"^\$\s+")
TORCHRUN = re.compile(r"^torchrun\b.*?-m\s+lst_model\.cli\s+")


def scripts() -> dict[str, click.Group]:
    """The click groups behind the console scripts of pyproject.toml ([project.scripts])."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    groups = {}
    for name in PROGRAMS:
        module_name, _, attribute = table[name].partition(":")
        module = importlib.import_module(module_name)
        entry = getattr(module, attribute)
        if not isinstance(entry, click.Group):  # a main() that runs the group: the module's top group
            found = [value for value in vars(module).values() if isinstance(value, click.Group)]
            subgroups = {id(sub) for group in found for sub in group.commands.values()}
            found = [group for group in found if id(group) not in subgroups]
            assert len(found) == 1, f"{table[name]}: expected one top click group in {module_name}, found {found}"
            entry = found[0]
        groups[name] = entry
    return groups


def command_lines(page: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, command, inline) for every `lst-data ...`/`lst-model ...` line of a fenced
    code block and every inline code span that is one (a span may wrap onto the next line of
    its paragraph); continuation lines (`\\`) of a fenced block are joined."""
    lines = page.read_text(encoding="utf-8").splitlines()
    in_fence = False
    pending: tuple[int, str] | None = None
    paragraph: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if FENCE.match(line) or (not in_fence and not line.strip()):
            yield from inline_commands(paragraph)
            paragraph = []
            if FENCE.match(line):
                in_fence = not in_fence
                pending = None
            continue
        if not in_fence:
            paragraph.append((number, line))
            continue
        if pending is not None:
            start, text = pending
            text = f"{text} {line.strip()}"
        else:
            start, text = number, line.strip()
        if text.endswith("\\"):
            pending = (start, text[:-1])
            continue
        pending = None
        command = as_command(text)
        if command is not None:
            yield start, command, False
    yield from inline_commands(paragraph)


def inline_commands(paragraph: list[tuple[int, str]]) -> Iterator[tuple[int, str, bool]]:
    text = "\n".join(line for _, line in paragraph)
    for match in INLINE_CODE.finditer(text):
        command = as_command(" ".join(match.group(1).split()))
        if command is not None:
            yield paragraph[text.count("\n", 0, match.start())][0], command, True


def as_command(text: str) -> str | None:
    text = PROMPT.sub("", text)
    match = TORCHRUN.match(text)
    if match:
        text = "lst-model " + text[match.end():]
    if text.split(" ", 1)[0] in PROGRAMS and " " in text:
        return text
    return None


def split_command(command: str) -> list[str]:
    """shlex words, without a trailing `# comment` (a `#` that starts a word outside quotes, as in bash)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            command = command[:i]
            break
    return shlex.split(command)


def parse_problem(groups: dict[str, click.Group], words: list[str], name_only: bool = False) -> str | None:
    """None when the command line parses; else what is wrong with it. With `name_only` (prose
    naming a command, "`lst-data stats` prints ..."), a bare command name without arguments
    passes when the command exists; anything after the name is parsed in full."""
    program, args = words[0], words[1:]
    command: click.Command = groups[program]
    path = [program]
    parent = None
    # Resolve the subcommand chain; group options (e.g. `lst-data -v build`) come before a name.
    while isinstance(command, click.Group):
        while args and args[0].startswith("-") and args[0] not in ("--help",):
            option = args.pop(0)
            if not any(option in param.opts for param in command.params):
                return f"no such option {option!r} for `{' '.join(path)}`"
        if not args:
            return None if name_only else f"`{' '.join(path)}` needs a command"
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        sub = command.get_command(ctx, args[0])
        if sub is None:
            return f"no such command {args[0]!r} in `{' '.join(path)}`"
        parent, command = ctx, sub
        path.append(args.pop(0))
    if "--help" in args or (name_only and not args):
        return None
    try:
        command.make_context(path[-1], list(args), parent=parent, resilient_parsing=False)
    except click.BadParameter as err:  # includes MissingParameter
        message = err.format_message()
        if isinstance(err, click.MissingParameter) or "does not exist" not in message:
            return f"`{' '.join(path)}`: {message}"
    except click.UsageError as err:  # NoSuchOption, BadOptionUsage, extra arguments
        return f"`{' '.join(path)}`: {err.format_message()}"
    return None


@pytest.fixture(scope="module")
def groups() -> dict[str, click.Group]:
    return scripts()


@pytest.fixture
def paths_need_not_exist(groups: dict[str, click.Group], monkeypatch: pytest.MonkeyPatch) -> None:
    """Documented paths are examples: a path parameter that must exist is parsed without that check,
    so that the whole line (later options, missing arguments) is still checked."""

    def walk(command: click.Command) -> Iterator[click.Command]:
        yield command
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from walk(sub)

    for group in groups.values():
        for command in walk(group):
            for param in command.params:
                if getattr(param.type, "exists", False):
                    monkeypatch.setattr(param.type, "exists", False)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_line_parses(page: Path, groups, paths_need_not_exist) -> None:
    problems = []
    for number, command, inline in command_lines(page):
        try:
            words = split_command(command)
        except ValueError as err:
            problems.append(f"{page.relative_to(ROOT)}:{number}: {command}\n    cannot split: {err}")
            continue
        problem = parse_problem(groups, words, name_only=inline)
        if problem:
            problems.append(f"{page.relative_to(ROOT)}:{number}: {command}\n    {problem}")
    assert not problems, "command lines that do not parse:\n" + "\n".join(problems)


def test_the_command_line_check_finds_what_is_wrong(groups, paths_need_not_exist) -> None:
    def problem(line: str) -> str | None:
        return parse_problem(groups, split_command(line))

    assert problem("lst-data build CORPUS --out RUN --set units.k=200  # a comment") is None
    assert problem("lst-data -v stats build/run/shards") is None
    assert problem("lst-data tokenizer encode --model tok.model 'hello there'") is None
    assert "unexpected extra argument" in problem("lst-data units train-kmeans DIR --out x.npy")
    assert "no such command" in problem("lst-data tokenizer fit DIR --out x.model")
    assert "missing" in problem("lst-data stats").lower()
    assert parse_problem(groups, ["lst-data", "stats"], name_only=True) is None
    assert "no such command" in parse_problem(groups, ["lst-data", "stats/show"], name_only=True)
    assert "no such option" in problem("lst-data build CORPUS --out RUN --no-such-flag").lower()
    assert "missing" in problem("lst-data build --out RUN").lower()
    assert "needs a command" in problem("lst-data export")
    assert "no such command" in problem("lst-model fly --shards X")


def test_command_lines_are_found_in_fences_inline_and_after_prompts(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `lst-data stats RUN/shards` first, not `lst-data`, then `lst-data show\n"
        "RUN/shards ID`.\n"
        "\n"
        "```bash\n"
        "$ lst-data build CORPUS \\\n"
        "    --out RUN\n"
        "torchrun --nproc_per_node 2 -m lst_model.cli train --shards S --out R\n"
        "echo lst-data build\n"
        "```\n"
    )
    assert list(command_lines(page)) == [
        (1, "lst-data stats RUN/shards", True),
        (1, "lst-data show RUN/shards ID", True),
        (5, "lst-data build CORPUS  --out RUN", False),
        (7, "lst-model train --shards S --out R", False),
    ]


REJECT_SECTION = re.compile(r"<!-- reject-codes:start -->(.*?)<!-- reject-codes:end -->", re.S)


def test_the_reject_code_table_of_the_docs_is_the_registry() -> None:
    page = (ROOT / "docs" / "ingest.md").read_text(encoding="utf-8")
    found = REJECT_SECTION.findall(page)
    assert len(found) == 1, "docs/ingest.md needs one <!-- reject-codes:start --> ... :end --> section"
    assert found[0].strip("\n") == reject_codes_markdown().strip("\n"), (
        "docs/ingest.md's reject codes differ from lst_data.core.rejects.REJECT_CODES; regenerate the table with\n"
        "  .venv/bin/python -c 'from lst_data.core.rejects import reject_codes_markdown; print(reject_codes_markdown())'"
    )
