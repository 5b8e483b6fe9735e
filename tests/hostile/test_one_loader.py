"""One loader for every read command: a stream counted twice is refused everywhere, and a
Parquet tree is checked against its manifests (issue 12).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import Evidence, assert_contract, kvledger

READERS = [
    ["verify", "{t}"],
    ["events", "{t}"],
    ["export", "{t}", "--perfetto", "{out}/t.json"],
    ["sql", "{t}", "SELECT count(*) FROM events"],
    ["forensics", "{t}"],
    ["report", "{t}", "-o", "{out}/r.html"],
    ["replay", "{t}", "--no-data"],
]


def _doubled(ev: Evidence, root: Path) -> dict[str, Path]:
    """Folders in which one stream is found twice, in every way a folder can hold it twice."""
    out = {}
    two_files = root / "two-files"  # a copy of a worker's ledger next to it
    shutil.copytree(ev.wal, two_files)
    shutil.copyfile(ev.wal / "ctx.sqlite", two_files / "ctx (copy).sqlite")
    out["two-files"] = two_files
    ledger_and_export = root / "ledger-and-export"  # a ledger and its own Parquet export
    shutil.copytree(ev.wal, ledger_and_export)
    shutil.copytree(ev.pq, ledger_and_export / "pq")
    out["ledger-and-export"] = ledger_and_export
    overlap = root / "overlapping-segments"  # a segment copied under another name
    shutil.copytree(ev.pq, overlap)
    seg = sorted(overlap.rglob("*.parquet"))[0]
    shutil.copyfile(seg, seg.with_name("part-9.parquet"))
    out["overlapping-segments"] = overlap
    link = root / "hard-link"  # the same file under two names
    shutil.copytree(ev.wal, link)
    (link / "ctx-again.sqlite").hardlink_to(link / "ctx.sqlite")
    out["hard-link"] = link
    return out


@pytest.fixture(scope="module")
def doubled(ev: Evidence, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _doubled(ev, tmp_path_factory.mktemp("doubled"))


@pytest.mark.parametrize("layout", ["two-files", "ledger-and-export", "overlapping-segments",
                                    "hard-link"])
@pytest.mark.parametrize("argv", READERS, ids=lambda a: a[0])
def test_a_stream_found_twice_is_refused(layout: str, argv: list[str], doubled: dict[str, Path],
                                         tmp_path: Path) -> None:
    args = [a.format(t=doubled[layout], out=tmp_path) for a in argv]
    run = kvledger(*args, cwd=tmp_path)
    assert_contract(run, 2)
    assert "twice" in run.err_lines[0] or "appears in both" in run.err_lines[0], run.err_lines


@pytest.mark.parametrize("argv", [a for a in READERS if a[0] in ("sql", "forensics", "report")],
                         ids=lambda a: a[0])
def test_the_same_ledger_given_twice_is_refused(argv: list[str], ev: Evidence,
                                                tmp_path: Path) -> None:
    for second in (ev.wal, ev.wal_ctx, ev.delete, ev.pq):
        args = [a.format(t=ev.wal, out=tmp_path) for a in argv]
        args.insert(1, str(second))
        assert_contract(kvledger(*args, cwd=tmp_path), 2)


def _verify(target: Path, cwd: Path) -> list[str]:
    run = kvledger("verify", target, "--json", cwd=cwd)
    assert_contract(run, {0, 1})
    data = json.loads(run.stdout)
    assert data["ok"] == (run.returncode == 0)
    return data["manifest_problems"]


def test_verify_checks_a_parquet_tree_against_its_manifests(ev: Evidence,
                                                            tmp_path: Path) -> None:
    assert _verify(ev.pq, tmp_path) == []
    cases = {}
    for name in ("missing-segment", "altered-segment", "no-manifest", "bad-manifest"):
        tree = tmp_path / name
        shutil.copytree(ev.pq, tree)
        cases[name] = tree
    last = sorted(cases["missing-segment"].rglob("*.parquet"))[-1]
    last.unlink()  # the manifest still names it: the tail of a stream is gone
    seg = sorted(cases["altered-segment"].rglob("*.parquet"))[0]
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(seg)  # rewritten with one attribute changed: a valid file, not the one
    attrs = table["attrs"].to_pylist()
    attrs[-1] = attrs[-1].replace("}", ',"forged":1}', 1)
    table = table.set_column(table.schema.get_field_index("attrs"), "attrs",
                             pa.array(attrs, pa.string()))
    pq.write_table(table, seg)
    sorted(cases["no-manifest"].rglob("*.manifest.json"))[0].unlink()
    sorted(cases["bad-manifest"].rglob("*.manifest.json"))[0].write_text("{broken")
    expect = {"missing-segment": "is missing", "altered-segment": "sha256",
              "no-manifest": "without a manifest", "bad-manifest": "unreadable manifest"}
    for name, tree in cases.items():
        run = kvledger("verify", tree, cwd=tmp_path)
        assert_contract(run, 1)
        assert any(line.startswith("manifest:") and expect[name] in line
                   for line in run.stdout.splitlines()), (name, run.stdout)
