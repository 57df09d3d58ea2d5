"""The README and docs/: every guide linked from the README, every link between them resolving,
and every ``python -m seglib`` command in them one the command line takes."""
import re
import shlex
from pathlib import Path

import pytest

from seglib.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# "python -m seglib COMMAND --help", "python -m seglib --debug ...": checked up to the placeholder
PLACEHOLDERS = {"COMMAND", "..."}


def commands(text: str) -> list[str]:
    """The ``python -m seglib`` commands of a page: in code blocks a line each, elsewhere in backticks."""
    found = []
    for i, part in enumerate(re.split(r"^```.*$", text, flags=re.M)):
        if i % 2:  # a code block
            found += [line.split(" #")[0] for line in part.splitlines() if "python -m seglib " in line]
        else:
            found += [span for span in re.findall(r"`([^`]+)`", part.replace("\n", " ")) if "python -m seglib " in span]
    return [c.split("python -m seglib ", 1)[1].strip() for c in found]


def test_the_readme_is_the_short_guide_and_links_every_topic_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, page.name


def test_links_between_the_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_in_the_docs_is_one_the_cli_takes(page):
    parser = build_parser()
    for command in commands(page.read_text()):
        args = shlex.split(command)
        if PLACEHOLDERS & set(args):  # what comes before the placeholder, with --help
            args = [*args[: min(args.index(p) for p in PLACEHOLDERS & set(args))], "--help"]
        try:
            parser.parse_args(args)
        except SystemExit as exit:
            assert exit.code == 0 and args[-1] == "--help", f"{page.name}: python -m seglib {command}: not a command"


def test_the_docs_hold_the_commands_users_run():
    every = [c.split()[0] for page in PAGES for c in commands(page.read_text())]
    assert {"prepare", "synth", "batch", "serve", "train", "fetch-weights", "colab-badges"} <= set(every)


def suite_functions() -> set[tuple[str, str]]:
    """``(module file, test function)`` of every test in tests/, read from the source."""
    import ast

    return {(path.name, node.name) for path in (REPO / "tests").glob("test_*.py")
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_list_of_behaviours_is_the_suite():
    """tests/BEHAVIOURS.md names every test function of the suite, module by module; a line with
    ``->`` is a test that was merged or moved, and names where its assertions went."""
    collected, listed, moved, module = suite_functions(), set(), {}, None
    for line in (REPO / "tests" / "BEHAVIOURS.md").read_text().splitlines():
        if line.startswith("## "):
            module = line[3:].strip()
        elif line.startswith("- `"):
            name = line[3:line.index("`", 3)]
            if "->" in line:
                moved[(module, name)] = line.split("->", 1)[1]
            else:
                listed.add((module, name))
    assert collected - listed == set(), f"not in tests/BEHAVIOURS.md: {sorted(collected - listed)}"
    assert listed - collected == set(), f"listed, but no such test: {sorted(listed - collected)}"
    for (module, name), where in moved.items():
        assert (module, name) not in collected, f"{module}::{name} is listed as moved but still runs"
        targets = re.findall(r"`([\w./-]+?)(?:::(\w+))?`", where)
        assert targets, f"{module}::{name}: say where it went"
        for target, test in targets:
            assert (target, test) in collected if test else (REPO / target).exists(), f"{module}::{name} -> {target}"


def test_the_docs_tables_of_architectures_and_losses_are_their_registries():
    """docs/notebooks.md shows the registries as they are (``make notebooks`` writes the tables)."""
    from seglib.runs.notebooks import DOCS, docs_tables

    text = DOCS.read_text()
    for name, table in docs_tables().items():
        assert f"<!-- {name} -->\n{table}\n<!-- /{name} -->" in text, f"run `make notebooks`: the {name} table"
