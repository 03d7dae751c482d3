"""gfm.base.atomic.write_text_atomic: the one temporary-file-then-rename writer (stage file outputs, the README)."""

from __future__ import annotations

import os
import stat

import pytest

from gfm.base.atomic import write_text_atomic


def test_writes_whole_file_with_the_umask_mode_and_leaves_nothing_beside_it(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_text_atomic(tmp_path / "new" / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert out.read_text() == "{}\n" and os.listdir(out.parent) == ["x.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # as open() makes it, not mkstemp's 0o600


def test_a_refusal_or_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "x.json"
    out.write_text("old\n")

    def refuse():
        raise PermissionError("not ours")

    with pytest.raises(PermissionError, match="not ours"):
        write_text_atomic(out, "new\n", check=refuse)
    with pytest.raises(TypeError):
        write_text_atomic(out, b"bytes are not text")  # fails mid-write
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["x.json"]


def test_the_check_runs_after_the_text_is_on_disk_and_before_the_rename(tmp_path):
    out = tmp_path / "x.json"
    seen = []
    write_text_atomic(out, "new\n", check=lambda: seen.append((out.exists(), sorted(os.listdir(tmp_path)))))
    (exists, names), = seen
    assert not exists and len(names) == 1 and names[0].startswith(".x.json.") and names[0].endswith(".tmp")
    assert out.read_text() == "new\n"
