"""The docs stand alone: every link resolves inside the repository, nothing points outside
it, and every file path and code name the docs cite exists."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
# What a reader follows: the README, the docs, and the READMEs beside deploy/ and bench/.
PAGES = [ROOT / "README.md", *DOCS, *sorted((ROOT / "deploy").rglob("README.md")),
         *sorted((ROOT / "bench").rglob("README.md"))]
# Example configs are read as documentation too (their comments are the knobs' manual).
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# Repository paths the docs cite: a top-level folder, then at least one more part.
_REPO_PATH = re.compile(r"(?<![\w./-])((?:llmgw|configs|tests|bench|dashboards|deploy)/"
                        r"[\w./-]*)")
_OUTSIDE = re.compile(r"\.\./shared|(?<![\w.])/work/|/home/|file://")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FILE_NAME = re.compile(r"\.(py|md|yaml|json|toml)$")
# Counters are exposed with _total; histograms with _bucket, _sum and _count.
_METRIC_SUFFIX = re.compile(r"_(total|bucket|sum|count)$")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text outside fenced code blocks (shell sessions, YAML, diagrams)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline code marks and punctuation dropped, spaces
    to hyphens, lower case."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[str]:
    return _LINK.findall(prose(page.read_text()))


def test_docs_exist_and_the_readme_lists_them() -> None:
    names = {page.name for page in DOCS}
    assert {"architecture.md", "routing.md", "lora.md", "disaggregation.md", "fleet.md",
            "ray.md", "operations.md"} <= names
    readme_links = {target.split("#")[0] for target in links(ROOT / "README.md")}
    assert sorted(f"docs/{name}" for name in names if f"docs/{name}" not in readme_links) == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        inside = resolved.is_relative_to(ROOT) and resolved.exists()
        anchored = not anchor or resolved.suffix != ".md" or anchor in anchors(resolved)
        if not (inside and anchored):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES + CONFIGS, ids=rel)
def test_nothing_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert [m.group(0) for m in _OUTSIDE.finditer(text)] == []
    # A Markdown file named in a page is a file of the repository (no design notes kept
    # elsewhere), relative to the repository root or to the page.
    missing = []
    for name in re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b", prose(text)):
        if not any(p.exists() for p in (ROOT / name, page.parent / name)) \
                and not list(ROOT.glob(f"**/{name}")):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=rel)
def test_cited_repository_paths_exist(page: Path) -> None:
    # The README's code blocks show sample output (an error naming configs/x.yaml); the
    # docs' code blocks are commands to run, and are checked too.
    text = page.read_text() if page.parent.name == "docs" else prose(page.read_text())
    cited = {match.rstrip(".,:;") for match in _REPO_PATH.findall(text)}
    assert cited, f"{rel(page)} cites no file"
    assert sorted(path for path in cited if not (ROOT / path).exists()) == []


@cache
def code_words() -> frozenset[str]:
    """Every word of the code, configs, tests and build files: what a doc may name."""
    sources = [*ROOT.glob("llmgw/**/*.py"), *ROOT.glob("tests/**/*.py"),
               *ROOT.glob("bench/**/*.py"), *CONFIGS, ROOT / "pyproject.toml",
               ROOT / "Makefile"]
    words: set[str] = set()
    for source in sources:
        words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source.read_text()))
    return frozenset(words)


@pytest.mark.parametrize("page", DOCS, ids=rel)
def test_cited_code_names_exist(page: Path) -> None:
    """Each name in inline code that reads as an identifier (``ReplicaPool.drain``,
    ``max_surge``, ``TICK_S``) occurs in the code, the configs or the tests."""
    words = code_words()
    unknown = sorted({span for span in _CODE_SPAN.findall(prose(page.read_text()))
                      if _IDENTIFIER.match(span) and not _FILE_NAME.search(span)
                      and not all(_METRIC_SUFFIX.sub("", part) in words or part in words
                                  for part in span.split("."))})
    assert unknown == []


@cache
def metric_labels() -> dict[str, frozenset[str]]:
    """Every exposed metric name (``_total`` and friends included) -> its label names."""
    from llmgw.metrics import Metrics

    registry = Metrics().registry
    return {name: frozenset(getattr(collector, "_labelnames", ()))
            for collector, names in registry._collector_to_names.items() for name in names}


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=rel)
def test_cited_metrics_exist_with_their_labels(page: Path) -> None:
    """``llmgw_requests_total{model,endpoint,status}``: a defined metric, with labels it
    has (a name ending in ``*`` stands for a family: some metric starts with it)."""
    known = metric_labels()
    wrong = []
    for name, labels in re.findall(r"`(llmgw_[a-z_]+\*?)(?:\{([a-z_,]*)\})?`", page.read_text()):
        if name.endswith("*"):
            if not any(metric.startswith(name[:-1]) for metric in known):
                wrong.append(name)
        elif name not in known or not set(filter(None, labels.split(","))) <= known[name]:
            wrong.append(f"{name}{{{labels}}}")
    assert wrong == []
