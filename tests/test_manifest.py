"""Run manifests: contents, portability (no machine paths), atomic writing, comparison for caching."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import pytest

from rftlib.files.manifest import (
    build_manifest,
    git_info,
    manifests_match,
    portable_path,
    read_manifest,
    repo_root,
    write_manifest,
)


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_manifest_contents(tmp_path):
    ckpt = tmp_path / "theta_zs.safetensors"
    ckpt.write_bytes(b"weights")
    m = build_manifest({"alpha": 0.5, "world": "fashion"}, seed=3, inputs={"theta_zs": ckpt})
    with m.step("finetune"):
        time.sleep(0.01)
    with m.step("evaluate"):
        pass
    m.finish()
    assert m["parameters"] == {"alpha": 0.5, "world": "fashion"} and m["seed"] == 3
    for pkg in ("python", "torch", "open_clip_torch", "numpy", "pandas", "rftlib"):
        assert m["versions"][pkg], pkg
    assert m["git"]["commit"] == "unknown" or len(m["git"]["commit"]) == 40
    assert m["inputs"]["theta_zs"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert list(m["steps"]) == ["finetune", "evaluate"] and m["steps"]["finetune"] >= 0.01
    assert m["started"] <= m["finished"] and m["wall_seconds"] >= 0.01


def test_no_absolute_paths(tmp_path):
    inside = repo_root() / "book" / "results" / "x.csv"
    outside = tmp_path / "elsewhere" / "w.pt"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    m = build_manifest(
        {"out_dir": str(inside), "ckpt": str(outside), "nested": {"paths": [str(inside)]}},
        seed=None,
        inputs={"w": outside},
    )
    text = json.dumps(m)
    for s in _strings(json.loads(text)):
        assert not os.path.isabs(s), s
    assert str(tmp_path) not in text and str(repo_root()) not in text
    assert m["parameters"]["out_dir"] == "book/results/x.csv"
    assert m["parameters"]["nested"]["paths"] == ["book/results/x.csv"]
    assert m["inputs"]["w"]["path"] == "<external>/w.pt"


def test_portable_path_relative_input():
    assert portable_path("book/intro.md") == "book/intro.md"


def test_missing_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        build_manifest({}, inputs={"x": tmp_path / "nothere.safetensors"})


def test_write_is_atomic_and_readable(tmp_path):
    m = build_manifest({"a": 1}, seed=0).finish()
    p = write_manifest(tmp_path / "res", m)
    assert p.name == "manifest.json" and [f.name for f in p.parent.iterdir()] == ["manifest.json"]
    back = read_manifest(tmp_path / "res")
    assert back["parameters"] == {"a": 1}
    assert read_manifest(tmp_path / "missing") is None


def test_manifests_match_ignores_times_only():
    a = build_manifest({"a": 1, "t": (1, 2)}, seed=0)
    # the same run later: only times differ (built by copying: other people's commits and edits
    # while this test runs would change the git and source fields of a fresh manifest)
    b = copy.deepcopy(dict(a))
    b.update(started="2099-01-01T00:00:00+00:00", finished="2099-01-01T00:01:00+00:00",
             wall_seconds=60.0, steps={"x": 1.0}, parameters={"a": 1, "t": [1, 2]})
    assert manifests_match(a, b)
    for key, value in [("parameters", {"a": 2}), ("seed", 1), ("git", {"commit": "0" * 40, "dirty": False})]:
        assert not manifests_match(a, {**b, key: value}), key
    assert manifests_match(a, {"parameters": {"a": 1, "t": [1, 2]}}, keys=["parameters"])
    assert not manifests_match(a, None)


def test_git_info_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None}
    m = build_manifest({}, root=tmp_path)
    assert m["git"]["commit"] == "unknown"


def test_cpu_capability_is_recorded_by_the_computing_process_only():
    import torch

    assert build_manifest({})["platform"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # the runner's and the pipeline's manifests: their kernels compute, under their own cap
    assert "cpu_capability" not in build_manifest({}, computes=False)["platform"]
