"""Atomic writes keep the old file when writing fails and use normal permissions."""

import json
import os
import stat

import pytest

from lmdp.io import atomic_write, atomic_write_json


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"runs": [1, 2, 3]})

    def fail_halfway(stream):
        stream.write(b'{"runs": [')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail_halfway)
    assert json.loads(path.read_text()) == {"runs": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_written_file_has_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "profile.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_non_finite_floats_become_strings(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"epsilon": float("inf"), "auc": float("nan")})
    assert json.loads(path.read_text()) == {"epsilon": "inf", "auc": "nan"}
