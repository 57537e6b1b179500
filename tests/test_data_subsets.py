"""tests/data, the real subsets the tests read: small, documented, and what its maker writes."""
from __future__ import annotations

import sys
from pathlib import Path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_subsets_are_small_and_each_file_is_documented(real_data):
    files = _files(real_data)
    assert sum(len(b) for b in files.values()) < 3_000_000
    source = files.pop("SOURCE.md").decode()
    for name in files:
        assert Path(name).name in source, name
    assert "non-commercial" in source and "make_test_data.py" in source


def test_make_test_data_reproduces_the_subsets(shared_data, real_data, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from make_test_data import make_test_data

    make_test_data(shared_data, tmp_path / "d")
    want = _files(real_data)
    del want["SOURCE.md"]
    got = _files(tmp_path / "d")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
