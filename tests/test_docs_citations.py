"""The repository cites docs/method.md by section; every cited section must exist.

Code, tests, configs and README cite `docs/method.md §N` (or `§N.M`, ranges `§4-§7`, lists
`§7.2, §7.5 and §9`) and link `docs/method.md#sN`; docs/method.md cites its own sections as bare
`§N`. A renumbered or deleted section would leave those citations pointing nowhere, so this test
reads the headings and anchors of docs/method.md and checks every citation against them. It also
checks that the page's sections are numbered without gaps, each with its stable anchor, that the
files and tests the page names exist, and that nothing cites the private brief the page replaced.
The checks import nothing heavy and take milliseconds.
"""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "method.md"
SKIP_DIRS = {".git", "__pycache__", "runs", "build", "dist", ".pytest_cache", ".ruff_cache"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".ini", ".cfg"}
# The brief's file name, assembled so that this file does not cite it itself.
BRIEF = "DGAD_" + "METHOD.md"

HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? ", re.M)
ANCHOR = re.compile(r'^<a id="s(\d+(?:\.\d+)?)"></a>$', re.M)
SECTION = r"§\d+(?:\.\d+)?"
# "docs/method.md §4-§7", "docs/method.md §7.2, §7.5, §9 and §10.4"
CITATION = re.compile(
    rf"docs/method\.md[ \t]*((?:{SECTION})(?:(?:[ \t]*[-–,][ \t]*|[ \t]+and[ \t]+){SECTION})*)"
)
LINK = re.compile(r"docs/method\.md#s(\d+(?:\.\d+)?)")


def repository_text_files():
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [
            d for d in subdirectories if d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        for name in files:
            path = pathlib.Path(directory) / name
            if path.suffix in TEXT_SUFFIXES:
                yield path


def doc_sections():
    """The section numbers of docs/method.md's headings, e.g. {"1", "3", "3.1"}."""
    return {number for _, number in HEADING.findall(DOC.read_text())}


def cited_sections(group):
    """The sections a citation names; a range §a-§b names every top-level section in it."""
    numbers = re.findall(r"§(\d+(?:\.\d+)?)", group)
    cited = set(numbers)
    for first, last in re.findall(r"§(\d+)[ \t]*[-–][ \t]*§(\d+)(?!\.)", group):
        cited.update(str(n) for n in range(int(first), int(last) + 1))
    return cited


def citations():
    """(file, line, section) for every docs/method.md citation outside the page itself."""
    found = []
    for path in repository_text_files():
        # This file's docstring examples are not citations.
        if path in (DOC, pathlib.Path(__file__).resolve()):
            continue
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found += [(path, line, s) for s in sorted(cited_sections(match.group(1)))]
        for match in LINK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((path, line, match.group(1)))
    return found


def test_the_method_page_exists_and_readme_links_it():
    assert DOC.is_file()
    assert "](docs/method.md" in (ROOT / "README.md").read_text()


def test_sections_are_numbered_without_gaps_and_each_has_its_anchor():
    text = DOC.read_text()
    headings = HEADING.findall(text)
    top = [int(number) for level, number in headings if level == "##"]
    assert top == list(range(1, len(top) + 1)), f"top-level sections out of order: {top}"
    for level, number in headings:
        if level == "###":
            major, minor = number.split(".")
            assert major in {str(n) for n in top}, f"§{number} sits under no section"
    subsections = {}
    for level, number in headings:
        if level == "###":
            major, minor = number.split(".")
            subsections.setdefault(major, []).append(int(minor))
    for major, minors in subsections.items():
        assert minors == list(range(1, len(minors) + 1)), f"§{major}'s subsections: {minors}"
    # Each heading is directly preceded by its anchor, so links survive a retitled section.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        heading = HEADING.match(line + "\n")
        if heading:
            anchor = ANCHOR.match(lines[i - 1]) if i else None
            assert anchor and anchor.group(1) == heading.group(2), (
                f"docs/method.md:{i + 1} §{heading.group(2)} lacks the anchor "
                f'<a id="s{heading.group(2)}"></a> on the line above'
            )


def test_every_cited_section_exists():
    sections = doc_sections()
    found = citations()
    assert found, "nothing cites docs/method.md by section"
    missing = [
        f"{path.relative_to(ROOT)}:{line} cites §{section}"
        for path, line, section in found
        if section not in sections
    ]
    assert not missing, "docs/method.md has no such section: " + "; ".join(missing)


def test_the_page_cites_only_its_own_sections():
    sections = doc_sections()
    text = DOC.read_text()
    missing = sorted(
        {s for s in cited_sections(" ".join(re.findall(rf"{SECTION}(?:-{SECTION})?", text)))}
        - sections
    )
    assert not missing, f"docs/method.md cites missing sections: {missing}"


def test_the_files_and_tests_the_page_names_exist():
    text = DOC.read_text()
    named = re.findall(r"`((?:dgad_tf|tests|configs)/[\w/.-]+\.(?:py|yaml))", text)
    for path in sorted(set(named)):
        assert (ROOT / path).is_file(), f"docs/method.md names {path}, which does not exist"
    for path, test in sorted(set(re.findall(r"(tests/\w+\.py)::\s*(\w+)", text))):
        assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M), (
            f"docs/method.md names {path}::{test}, which does not exist"
        )
    for test in sorted(set(re.findall(r"`::(test_\w+)`", text))):
        assert any(
            re.search(rf"^def {test}\(", p.read_text(), re.M) for p in (ROOT / "tests").glob("*.py")
        ), f"docs/method.md names ::{test}, which no test file defines"


def test_nothing_cites_the_private_brief():
    this_file = pathlib.Path(__file__).resolve()
    offenders = [
        str(path.relative_to(ROOT))
        for path in repository_text_files()
        if path != this_file and BRIEF in path.read_text(errors="replace")
    ]
    assert not offenders, (
        f"{', '.join(offenders)} cite {BRIEF}, which is not in this repository: "
        "cite the section of docs/method.md instead"
    )


def test_the_page_and_the_recipe_tables_name_the_same_reference_commits():
    # docs/method.md cites reference code at the commits tests/test_reference_recipes.py read it
    # from; a repository cited on one side only (or at another commit) is a citation of unread code.
    tables = (ROOT / "tests" / "test_reference_recipes.py").read_text()
    read = dict(re.findall(r"^    ([\w-]+/[\w-]+)\s+([0-9a-f]{7})$", tables, re.M))
    named = dict(re.findall(r"([\w-]+/[\w-]+) `([0-9a-f]{7})`", DOC.read_text().split("\n\n")[1]))
    assert read and named == read
