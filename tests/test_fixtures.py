"""The tests need only the repository: nothing under tests/ reads the full data sets kept beside
it (benchmarks and the evaluator do), and the small fixtures that replace them are complete."""

from __future__ import annotations

import re
from pathlib import Path

from server.evaluation import load_beir, load_sts
from tests._collections import SCIFACT, scifact_docs

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
# Only this hand-run script reads the full data sets (to rebuild tests/fixtures/).
ALLOWED = {FIXTURES / "make_fixtures.py"}
# A "shared" folder reached through "..", a shared-then-data path (in a string or a path join) and
# the old SHARED-DATA constant. Written (here and below) so that this file does not match itself.
OUTSIDE_DATA = re.compile(
    r"""\.\.[/\\]shared|shared[/\\]data|['"]shared['"]\s*[/,]\s*['"]data['"]|shared_?data""",
    re.IGNORECASE,
)


def _offending_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if OUTSIDE_DATA.search(line)]


def test_the_pattern_catches_the_ways_tests_used_to_reach_the_data() -> None:
    for line in (
        'SCIFACT = Path(__file__).resolve().parent.parent.parent / "shar' + 'ed" / "data" / "scifact"',
        "SHARED" + "_DATA = REPO_ROOT.parent / 'x'",
        "embed-server eval --sts ../shar" + "ed/data/stsb/sts-test.csv",
        'os.path.join(root, "shar' + 'ed", "data")',
    ):
        assert _offending_lines(line) == [line]
    assert not _offending_lines('store.upsert([_up("x", "1", "shared")])  # vectors are shared')


def test_no_test_file_reads_data_outside_the_repository() -> None:
    found = {}
    for path in sorted(TESTS.rglob("*")):
        if not path.is_file() or path in ALLOWED or "__pycache__" in path.parts or path.suffix == ".gz":
            continue
        lines = _offending_lines(path.read_bytes().decode("utf-8", errors="replace"))
        if lines:
            found[str(path.relative_to(TESTS))] = lines
    assert not found, f"tests must read tests/fixtures/, not the data sets outside the repository: {found}"


def test_scifact_fixture_is_a_complete_beir_subset() -> None:
    dataset = load_beir(SCIFACT)
    assert (len(dataset.corpus), len(dataset.queries), len(dataset.qrels)) == (400, 50, 50)
    judged = {doc for rels in dataset.qrels.values() for doc in rels}
    assert len(judged) == 52 and judged <= set(dataset.corpus)  # every relevant document is there
    assert len(scifact_docs(1000)) == 400 and len({doc_id for doc_id, _, _ in scifact_docs(400)}) == 400
    assert (SCIFACT / "SOURCE.md").is_file()


def test_stsb_fixture_parses_as_sts_benchmark() -> None:
    pairs = load_sts(FIXTURES / "stsb" / "sts-dev.csv")
    assert len(pairs.gold) == 200 and all(0.0 <= g <= 5.0 for g in pairs.gold)
    assert len(set(pairs.gold)) > 20  # real graded scores, not a constant
    assert all(pairs.left) and all(pairs.right)
    assert (FIXTURES / "stsb" / "SOURCE.md").is_file() and (FIXTURES / "stsb" / "LICENSE.txt").is_file()
