"""The front door: README.md's size and order, and every relative link of the Markdown files
outside docs/ (docs/ itself is checked by `mkdocs build --strict` in make test)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(markdown: str) -> list[str]:
    """The link targets that point into the repository (no scheme, no bare anchor)."""
    outside_code = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return [t for t in LINK.findall(outside_code) if "://" not in t and not t.startswith(("#", "mailto:"))]


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md"])
def test_every_relative_link_points_at_a_file_that_exists(name):
    text = open(os.path.join(ROOT, name), encoding="utf-8").read()
    links = relative_links(text)
    assert links, name
    missing = [t for t in links if not os.path.exists(os.path.join(ROOT, t.split("#", 1)[0]))]
    assert not missing, missing


def test_the_readme_is_short_and_starts_with_what_a_newcomer_needs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 300
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[:4] == ["How it works", "What you need", "Two commands", "Then"], headings
    # The two commands, then the environment, before the first bare `adpredict`.
    first_bare = text.index("\nadpredict predict ")
    two = text.index("make demo   #"), text.index("make test   #")
    assert two[0] < two[1] < text.index("source .venv/bin/activate") < first_bare


def test_every_docs_page_is_in_the_site_navigation():
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8"))

    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    present = {name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")}
    assert listed == present
