"""The docs cannot drift from the code and the results: every file and name
docs/ARCHITECTURE.md gives as `path` or `path: name` exists; every results path README.md and
docs/PERFORMANCE.md name exists, and their numbers tables are exactly what benchmarks/tables.py
makes from those results; every run kept in benchmarks/results/ is cited; the README stays a
five-minute read."""
import os
import re

import pytest

from benchmarks import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PATH = re.compile(r"^[\w.-]+(/[\w.*<>-]+)*/?$")


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def _spans(text):
    return re.findall(r"`([^`\n]+)`", text)


def _is_path(span):
    return "/" in span and PATH.match(span) and "*" not in span and "<" not in span


def _defines(text, name):
    return re.search(rf"(def|class|struct|#define)\s+{re.escape(name)}\b"
                     rf"|^\s*{re.escape(name)}\s*[:=]|\b{re.escape(name)}\s*\(", text, re.M)


def test_architecture_names_exist():
    text = _read("docs/ARCHITECTURE.md")
    checked = 0
    for span in _spans(text):
        path, _, names = span.partition(": ")
        if not _is_path(path):
            continue
        assert os.path.exists(os.path.join(ROOT, path)), f"docs/ARCHITECTURE.md: no {path}"
        checked += 1
        if names and os.path.isfile(os.path.join(ROOT, path)):
            source = _read(path)
            for name in (n.strip() for n in names.split(",")):
                assert _defines(source, name), f"docs/ARCHITECTURE.md: {path} has no {name}"
    assert checked > 50  # the page names the code it maps


@pytest.mark.parametrize("document", tables.DOCUMENTS)
def test_results_paths_named_exist(document):
    for span in _spans(_read(document)):
        if span.startswith("benchmarks/results/") and _is_path(span):
            assert os.path.exists(os.path.join(ROOT, span)), f"{document}: no {span}"


@pytest.mark.parametrize("document", tables.DOCUMENTS)
def test_tables_are_made_from_the_results(document):
    found = tables.tables_in(_read(document))
    assert found, f"{document} has no numbers table"
    for name, body in found.items():
        assert body == tables.render(name), (
            f"{document}: table {name} differs from its results; run "
            "`python -m benchmarks.tables --write`")


def _kept_runs():
    """Every file under benchmarks/results/ but its README and scratch output."""
    found = []
    for directory, dirs, files in os.walk(RESULTS):
        dirs[:] = [d for d in dirs if d != "scratch"]
        found += [os.path.relpath(os.path.join(directory, f), ROOT) for f in files
                  if f != "README.md"]
    return found


def test_every_kept_run_is_cited():
    """results/ keeps what the docs cite: each file is named (or its folder is) by README.md,
    docs/PERFORMANCE.md, benchmarks/results/README.md or a table's source."""
    cited = set(tables.SOURCES.values())
    for document in tables.DOCUMENTS + ("benchmarks/results/README.md",):
        cited |= {s.rstrip("/") for s in _spans(_read(document))
                  if s.startswith("benchmarks/results/")}
    for path in _kept_runs():
        parents = {path} | {os.path.dirname(path[:i]) for i in range(len(path))}
        assert parents & cited or any(path.startswith(c + "/") for c in cited), \
            f"{path} is cited nowhere: drop it (git keeps it) or cite it"


def test_readme_is_a_five_minute_read():
    text = _read("README.md")
    assert len(text.splitlines()) <= 200
    assert max(len(line) for line in text.splitlines()) <= 160
