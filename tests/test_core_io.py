"""The one atomic writer: the file mode is what the umask gives (as a plain open), the old file stays whole
until the new one is complete, and the one canonical JSON and sha256 helpers."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from litdistill.core.io import atomic_file, atomic_write_text, canonical_json, sha256_file, sha256_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "report.md", "x")
        with open(tmp_path / "plain.md", "w") as f:
            f.write("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain.md").stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "config.yaml", "old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_canonical_json_and_sha256_are_stable_and_independent_of_key_order(tmp_path):
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}' == canonical_json({"a": [1, "é"], "b": 1})
    assert sha256_text("abc") == hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "f").write_bytes(b"x" * 5_000_000)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"x" * 5_000_000).hexdigest()


def test_a_truncated_cache_manifest_is_named_with_the_way_out(tmp_path):
    from litdistill.cache.store import CorruptStoreError, TeacherStore

    store = TeacherStore(tmp_path / "store", {"k": 1})
    store.path.mkdir(parents=True)
    (store.path / "manifest.json").write_text('{"key": {"k": 1}, "spl')
    with pytest.raises(CorruptStoreError, match=r"manifest .*manifest.json is damaged .*delete .*store and rebuild"):
        store.manifest()
