"""Reliability of the miniature worlds and of the ``rft world`` workflow: one test per case.

Every case runs on temporary copies of the worlds (``$RFT_WORLDS``), never on ``worlds/`` itself:

* a world folder copied with its checkpoint and manifest, its world file edited, or a world holding
  another world's checkpoint, is refused by ``rft world verify`` and by ``rft run`` before a kernel starts;
* ``$RFT_WORLDS``, ``$RFT_FASHION_MNIST`` and ``$RFT_REPO_ROOT`` naming no folder give one line naming
  the variable (exit 2), before any kernel or model;
* ``rft world verify`` names a world whose world file lacks a key and still checks the others;
* a corrupt or stale pretraining state (``state.pt``) names the file and the fix before any model is built;
* ``rft world new | pretrain | verify | list`` and ``rft pipeline --world NAME`` do what they say
  (the pretraining test uses a tiny model and two short epochs, and kills a run to resume it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from rftlib import cli
from rftlib.files.manifest import repo_root

ROOT = repo_root()
WORLDS = ROOT / "worlds"
ZEROSHOT = str(ROOT / "notebooks" / "zeroshot.ipynb")
FINETUNE = str(ROOT / "notebooks" / "finetune.ipynb")


@pytest.fixture
def worlds(tmp_path, monkeypatch) -> Path:
    """A temporary worlds folder ($RFT_WORLDS) with copies of digits, digits-clean, fashion and paper-cifar10."""
    d = tmp_path / "worlds"
    for name in ("digits", "digits-clean", "fashion", "paper-cifar10"):
        shutil.copytree(WORLDS / name, d / name)
    monkeypatch.setenv("RFT_WORLDS", str(d))
    import rftlib.worlds.workflow as workflow

    runs = tmp_path / "runs"  # the pretraining's resume states: never the repository's runs/
    monkeypatch.setattr(workflow, "resume_folder", lambda name: runs / name / "pretrain")
    return d


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if papermill would start a kernel."""
    import papermill

    def boom(*a, **k):
        raise AssertionError("papermill.execute_notebook was called: the bad input was not rejected first")

    monkeypatch.setattr(papermill, "execute_notebook", boom)


def _rft(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    """``rft ARGV`` in this process: exit code, stdout lines, stderr lines."""
    rc = cli.main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out.strip().splitlines(), cap.err.strip().splitlines()


def _one_error(err: list[str], *patterns: str) -> str:
    assert len(err) == 1 and err[0].startswith("rft: error: "), err
    for pattern in patterns:
        assert re.search(pattern, err[0]), (pattern, err[0])
    return err[0]


def _edit_world_file(folder: Path, **changes) -> None:
    """Edit ``folder/world.yaml``: top-level keys, or ``section__key`` for a key of a section; None deletes."""
    path = folder / "world.yaml"
    cfg = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        target, k = (cfg[section], sub) if sub else (cfg, section)
        if value is None:
            del target[k]
        else:
            target[k] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _copied(worlds: Path, src: str, name: str, **changes) -> Path:
    """``worlds/<src>`` copied whole (world file, checkpoint, manifest) to ``worlds/<name>``, renamed and edited."""
    d = shutil.copytree(worlds / src, worlds / name)
    _edit_world_file(d, name=name, **changes)
    return d


# ---------------------------------------------------------------------------------------------
# Copied and mixed-up world folders


def test_copied_world_with_an_edited_world_file_is_refused_by_verify(worlds, capsys):
    _copied(worlds, "digits", "digits-s1", pretrain__seed=1)
    rc, out, err = _rft(capsys, "world", "verify", "digits-s1")
    assert rc == 1 and out == []
    _one_error(err, r"world 'digits-s1'", r"was pretrained for world 'digits'", r"rft world pretrain digits-s1")


def test_edited_world_file_of_a_world_is_refused_by_verify(worlds, capsys):
    _edit_world_file(worlds / "digits", pretrain__seed=1)  # same folder, same name: only the hash can tell
    rc, out, err = _rft(capsys, "world", "verify", "digits")
    assert rc == 1 and out == []
    _one_error(err, r"world 'digits'", r"world\.yaml changed since its checkpoint was pretrained",
               r"rft world pretrain digits")


@pytest.mark.parametrize("notebook", [ZEROSHOT, FINETUNE], ids=["zeroshot", "finetune"])
def test_copied_world_is_refused_before_a_kernel_starts(worlds, no_kernel, capsys, tmp_path, notebook):
    _copied(worlds, "digits", "digits-s1", pretrain__seed=1)
    out_dir = tmp_path / "out"
    rc, _, err = _rft(capsys, "run", notebook, "-p", "world=digits-s1", "--out", str(out_dir))
    assert rc == 2 and not out_dir.exists()
    _one_error(err, r"world='digits-s1'", r"was pretrained for world 'digits'")


def test_digits_with_fashions_checkpoint_and_manifest_is_refused(worlds, no_kernel, capsys, tmp_path):
    for f in ("zeroshot.safetensors", "manifest.json"):
        shutil.copy(worlds / "fashion" / f, worlds / "digits" / f)
    rc, out, err = _rft(capsys, "world", "verify", "digits")
    assert rc == 1 and out == []
    _one_error(err, r"world 'digits'", r"was pretrained for world 'fashion'")
    rc, _, err = _rft(capsys, "run", ZEROSHOT, "-p", "world=digits", "--out", str(tmp_path / "out"))
    assert rc == 2 and not (tmp_path / "out").exists()
    _one_error(err, r"world='digits'", r"was pretrained for world 'fashion'")


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x10
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_architecture(path: Path) -> None:
    """fashion's checkpoint has another architecture only if the models differ; build one that does:
    the digits checkpoint with one tensor dropped, its manifest's checksum updated (so only the shape
    check can tell)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = state[key].flatten()[:3].clone()
    save_file(state, str(path), metadata={"world": "digits"})
    m = path.parent / "manifest.json"
    meta = json.loads(m.read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    m.write_text(json.dumps(meta))


@pytest.mark.parametrize("spoil,match", [
    (_flip_byte, r"checksum mismatch"),
    (_truncate, r"bad checkpoint \(cannot read the header.*corrupt"),
    (_other_architecture, r"architecture|shape"),
], ids=["checksum", "truncated", "architecture"])
@pytest.mark.parametrize("notebook", [ZEROSHOT, FINETUNE], ids=["zeroshot", "finetune"])
def test_a_spoiled_checkpoint_is_refused_before_a_kernel_starts(worlds, no_kernel, capsys, tmp_path, notebook,
                                                                spoil, match):
    spoil(worlds / "digits" / "zeroshot.safetensors")
    t0 = time.perf_counter()
    rc, _, err = _rft(capsys, "run", notebook, "-p", "world=digits", "--out", str(tmp_path / "out"))
    assert rc == 2 and not (tmp_path / "out").exists()
    _one_error(err, r"world='digits'", match)
    assert time.perf_counter() - t0 < 20, "the check should take seconds, not a kernel's start"


# ---------------------------------------------------------------------------------------------
# Environment variables that name no folder


ENV_CASES = [
    ("RFT_WORLDS", ["world", "verify"]),
    ("RFT_WORLDS", ["world", "list"]),
    ("RFT_WORLDS", ["run", ZEROSHOT, "-p", "world=digits"]),
    ("RFT_FASHION_MNIST", ["run", ZEROSHOT, "-p", "world=fashion"]),
    ("RFT_FASHION_MNIST", ["world", "pretrain", "fashion", "--force"]),  # the temporary copy of fashion
    ("RFT_REPO_ROOT", ["world", "verify"]),
    ("RFT_REPO_ROOT", ["run", ZEROSHOT, "-p", "world=digits"]),
]


@pytest.mark.parametrize("variable,argv", ENV_CASES, ids=[f"{v}-{a[0]}-{a[1][-15:]}" for v, a in ENV_CASES])
def test_a_variable_naming_no_folder_gives_one_line_naming_it(worlds, monkeypatch, no_kernel, capsys, tmp_path,
                                                              variable, argv):
    import rftlib.worlds.pretrain as pre

    monkeypatch.setattr(pre, "create_clip", lambda *a, **k: pytest.fail("a model was built before the check"))
    nowhere = tmp_path / "nowhere"
    monkeypatch.setenv(variable, str(nowhere))
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path / "out")]
    rc, _, err = _rft(capsys, *argv)
    assert rc == 2 and not (tmp_path / "out").exists()
    _one_error(err, re.escape(f"{variable}={str(nowhere)!r}"))


@pytest.mark.slow
def test_the_rft_command_names_a_variable_naming_no_folder(tmp_path):
    """The same through a fresh ``rft`` process (this worktree's code: ``python -m rftlib.cli``)."""
    import os

    env = {**os.environ, "RFT_WORLDS": str(tmp_path / "nowhere"), "RFT_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "rftlib.cli", "world", "verify"], capture_output=True, text=True,
                       env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == ""
    _one_error(lines, re.escape(f"RFT_WORLDS={str(tmp_path / 'nowhere')!r} is not a folder"))


# ---------------------------------------------------------------------------------------------
# rft world verify: every world, the good ones shown


@pytest.mark.parametrize("argv", [["world", "verify"], ["verify"]], ids=["world-verify", "verify-alias"])
def test_world_verify_names_a_world_lacking_a_key_and_checks_the_others(worlds, capsys, argv):
    _copied(worlds, "digits", "broken", captions=None)
    rc, out, err = _rft(capsys, *argv)
    assert rc == 1
    assert [line.split(":")[0] for line in out] == ["digits", "digits-clean", "fashion"] and all(line.endswith(" OK") for line in out)
    _one_error(err, r"'broken'", r"lacks keys \['captions'\]")


# ---------------------------------------------------------------------------------------------
# The pretraining's resume state


def _tiny(worlds: Path, name: str = "tiny") -> str:
    """A tiny world (rft-tiny, two short epochs) created from digits by ``rft world new``."""
    from rftlib.worlds.workflow import create_world

    create_world(name, "digits", {"model": "rft-tiny", "epochs": 2, "batch_size": 512, "eval_every": 1,
                                  "warmup_steps": 2})
    return name


@pytest.mark.parametrize("state,match", [
    (lambda p: torch.save({"epoch": 1, "note": Fraction(1, 3)}, p), r"not a training state rftlib can load safely"),
    (lambda p: p.write_bytes(b"PK\x03\x04 cut short"), r"not a readable rftlib training state"),
    (lambda p: torch.save({"epoch": 1}, p), r"lacks \['model', 'optimizer'"),
], ids=["pickle", "truncated", "foreign"])
def test_a_corrupt_pretraining_state_names_the_file_and_the_fix(worlds, capsys, monkeypatch, tmp_path, state, match):
    import rftlib.worlds.pretrain as pre

    monkeypatch.setattr(pre, "create_clip", lambda *a, **k: pytest.fail("a model was built before the check"))
    work = tmp_path / "runs" / "tiny" / "pretrain"
    work.mkdir(parents=True)
    state(work / "state.pt")
    rc, _, err = _rft(capsys, "world", "pretrain", _tiny(worlds), "--work-dir", str(work))
    assert rc == 1
    _one_error(err, match, re.escape(str(work / "state.pt")), r"delete it to restart that run .*\(rm ")


def test_a_pretraining_state_of_another_recipe_says_how_to_start_over(worlds, capsys, monkeypatch, tmp_path):
    import rftlib.worlds.pretrain as pre

    monkeypatch.setattr(pre, "create_clip", lambda *a, **k: pytest.fail("a model was built before the check"))
    name = _tiny(worlds)
    keys = ("model", "optimizer", "scheduler", "history", "epoch", "recipe", "steps_per_epoch")
    torch.save({**{k: {} for k in keys}, "epoch": 1, "recipe": {"epochs": "9"}}, tmp_path / "state.pt")
    rc, _, err = _rft(capsys, "world", "pretrain", name, "--work-dir", str(tmp_path))
    assert rc == 1
    _one_error(err, r"another pretraining recipe \(changed: .*epochs", rf"rft world pretrain {name} --restart")


# ---------------------------------------------------------------------------------------------
# rft world new, verify, list


def test_world_new_writes_only_a_changed_world_file(worlds, capsys):
    from rftlib.worlds.world import load_world

    rc, out, _ = _rft(capsys, "world", "new", "mine", "--from", "digits", "--set", "seed=1", "--set", "p_wrong=0.3")
    assert rc == 0 and out == [str(worlds / "mine" / "world.yaml")]
    assert sorted(p.name for p in (worlds / "mine").iterdir()) == ["world.yaml"]  # no checkpoint, no manifest
    base, new = (yaml.safe_load((worlds / n / "world.yaml").read_text()) for n in ("digits", "mine"))
    assert new["pretrain"]["seed"] == 1 and new["captions"]["p_wrong"] == 0.3 and new["name"] == "mine"
    new["pretrain"]["seed"], new["captions"]["p_wrong"], new["name"] = 0, 0.2, "digits"
    assert new == base
    assert load_world("mine").world_sha256 != load_world("digits").world_sha256
    rc, _, err = _rft(capsys, "world", "verify", "mine")
    assert rc == 1
    _one_error(err, r"world 'mine': checkpoint .*zeroshot\.safetensors is missing", r"rft world pretrain mine")
    rc, out, _ = _rft(capsys, "world", "list")
    states = dict(line.split("\t", 1) for line in out)
    assert rc == 0 and states["mine"] == "no checkpoint: pretrain it with `rft world pretrain mine`"
    assert states["digits"].startswith("verified, sha256 ") and states["paper-cifar10"].startswith("paper setting")


NEW_CASES = [
    (["Mine", "--from", "digits"], r"world name 'Mine' is not allowed; .*lower-case"),
    (["my/world", "--from", "digits"], r"world name 'my/world' is not allowed"),
    (["digits", "--from", "fashion"], r"world name 'digits' is taken: .*digits exists already"),
    (["x", "--from", "digts"], r"world='digts' unknown \(did you mean 'digits'\?\)"),
    (["x", "--from", "paper-cifar10"], r"'paper-cifar10' is a paper setting, not a miniature world"),
    (["x", "--from", "digits", "--set", "sed=1"], r"unknown world key 'sed' \(did you mean 'seed'\?\)"),
    (["x", "--from", "digits", "--set", "pretrain.epoch=3"], r"unknown world key 'pretrain\.epoch' \(did you mean 'pretrain\.epochs'\?\)"),
    (["x", "--from", "digits", "--set", "name=y"], r"unknown world key 'name'"),
    (["x", "--from", "digits", "--set", "seed=one"], r"pretrain\.seed takes a value of type int \(now 0\)"),
    (["x", "--from", "digits", "--set", "epochs=0"], r"pretrain\.epochs=0 must be an integer >= 1"),
    (["x", "--from", "digits", "--set", "p_wrong=1.5"], r"captions\.p_wrong=1\.5 must be a probability"),
    (["x", "--from", "digits", "--set", "unseen_styles=[photo]"], r"unseen_styles \['photo'\] are also in pretrain_styles"),
    (["x", "--from", "digits", "--set", "seed"], r"bad override 'seed': write KEY=VALUE"),
]


@pytest.mark.parametrize("argv,match", NEW_CASES, ids=[" ".join(a)[:40] for a, _ in NEW_CASES])
def test_world_new_refuses_bad_input_in_one_line(worlds, capsys, argv, match):
    before = sorted(p.name for p in worlds.iterdir())
    rc, _, err = _rft(capsys, "world", "new", *argv)
    assert rc == 2
    _one_error(err, match)
    assert sorted(p.name for p in worlds.iterdir()) == before  # nothing written, no temporary folder left


@pytest.mark.parametrize("argv,code,match", [
    (["pretrain", "digts"], 2, r"world='digts' unknown \(did you mean 'digits'\?\)"),
    (["pretrain", "paper-cifar10"], 2, r"'paper-cifar10' is a paper setting: .*nothing to pretrain"),
    (["pretrain", "digits", "--threads", "0"], 2, r"--threads=0 must be an integer >= 1"),
    (["pretrain", "digits"], 2, r"world 'digits' already has a verified checkpoint .*pass --force"),
    (["verify", "digts"], 1, r"world='digts' unknown \(did you mean 'digits'\?\)"),  # a failed check, as for rft verify
], ids=["unknown", "paper", "threads", "shipped", "verify-unknown"])
def test_world_verbs_refuse_bad_input_in_one_line(worlds, capsys, monkeypatch, argv, code, match):
    import rftlib.worlds.pretrain as pre

    monkeypatch.setattr(pre, "create_clip", lambda *a, **k: pytest.fail("a model was built before the check"))
    rc, _, err = _rft(capsys, "world", *argv)
    assert rc == code
    _one_error(err, match)


# ---------------------------------------------------------------------------------------------
# rft pipeline --world NAME


def test_a_new_world_takes_the_steps_of_the_template_world_on_its_data_set(worlds, capsys):
    """A world made from digits gets the steps of the default's world on digits' data set (digits-clean's
    grid and sizes), not fashion's."""
    from rftlib.book.params import load_param_file, world_pipeline

    _rft(capsys, "world", "new", "mine", "--from", "digits")
    pf = world_pipeline("mine", "default")
    digits = {s.name.removeprefix("digits-clean-"): s for s in load_param_file("default").steps
              if s.parameters.get("world") == "digits-clean"}
    assert pf.results_root == "book/results" and world_pipeline("mine", "quick").results_root == "book/results-quick"
    for step in pf.steps:
        old = digits[step.name.removeprefix("mine-")]
        assert {k: v for k, v in step.parameters.items() if k != "world" and not k.endswith("_dir")} == \
            {k: v for k, v in old.parameters.items() if k != "world" and not k.endswith("_dir")}
    assert pf.get_step("mine-finetune").parameters["grid"].endswith("grids/digits-clean.yaml")


@pytest.mark.parametrize("template", ["default", "quick"])
def test_pipeline_for_a_world_is_generated_from_its_name(template):
    from rftlib.book.params import load_param_file, world_pipeline

    base = load_param_file(template)
    first = base.steps[0].parameters["world"]
    model = [s for s in base.steps if s.parameters.get("world") == first]
    pf = world_pipeline("mine", template)
    assert pf.step_names() == [s.name.replace(first, "mine", 1) for s in model]
    others = {s.parameters["world"] for s in base.steps} - {"mine"}
    for step, old in zip(pf.steps, model):
        params = pf.parameters_for(step)
        assert params["world"] == "mine" and step.notebook == old.notebook
        dirs = {k: v for k, v in params.items() if k.endswith("_dir")}
        for k, v in dirs.items():  # every resolved dir is one of the new world's step folders
            assert Path(v).name in pf.step_names() and not any(w in v for w in others), (k, v)
        assert {k: v for k, v in params.items() if k not in dirs and k != "world"} == \
            {k: v for k, v in base.parameters_for(old).items() if not k.endswith("_dir") and k != "world"}


def test_rft_pipeline_world_lists_and_runs_like_a_pipeline_file(worlds, no_kernel, capsys):
    _rft(capsys, "world", "new", "mine", "--from", "digits")
    rc, out, _ = _rft(capsys, "pipeline", "--world", "mine", "--quick", "--list")
    assert rc == 0 and [line.split("\t")[0] for line in out] == [
        f"mine-{s}" for s in ("zeroshot", "finetune", "interpolate", "stragglers", "sharpness", "sparsity", "evidence")]
    assert all(line.split("\t")[2].startswith("book/results-quick/mine-") for line in out)  # quick's own root
    rc, _, err = _rft(capsys, "pipeline", "--world", "mine", "--quick")  # validated like a file: before any kernel
    assert rc == 2
    _one_error(err, r"step mine-zeroshot: .*shipped checkpoint of world 'mine'")


@pytest.mark.parametrize("argv,match", [
    (["pipeline", "quick", "--world", "mine"], r"give either PARAMFILE \(quick\) or --world mine"),
    (["pipeline"], r"rft pipeline needs a PARAMFILE"),
    (["pipeline", "quick", "--quick"], r"--quick needs --world NAME"),
    (["pipeline", "--world", "Mine"], r"world name 'Mine' is not allowed"),
], ids=["both", "neither", "quick-alone", "bad-name"])
def test_rft_pipeline_world_refuses_bad_input(no_kernel, capsys, argv, match):
    rc, _, err = _rft(capsys, *argv)
    assert rc == 2
    _one_error(err, match)


# ---------------------------------------------------------------------------------------------
# rft world pretrain: a tiny world, killed and resumed


@pytest.mark.slow
def test_world_pretrain_resumes_after_a_kill_and_ships_a_verified_checkpoint(worlds, capsys, monkeypatch, tmp_path):
    import rftlib.worlds.pretrain as pre
    from rftlib.models.checkpoints import load_state_dict
    from rftlib.worlds.world import load_world

    name, twin = _tiny(worlds, "tiny"), _tiny(worlds, "tiny-twin")
    real, calls = pre.render_corpus, {"n": 0}

    def killed_in_epoch_2(*a, **k):  # the corpus is rendered at the start of each epoch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pre, "render_corpus", killed_in_epoch_2)
    work = tmp_path / "runs" / name / "pretrain"  # the default resume folder (see the worlds fixture)
    args = ("world", "pretrain", name, "--threads", "1", "--n-eval", "20")
    rc, _, err = _rft(capsys, *args)
    assert rc == cli.EXIT_INTERRUPTED and (work / "state.pt").is_file() and not load_world(name).checkpoint.exists()
    _, out, _ = _rft(capsys, "world", "list")
    assert dict(line.split("\t", 1) for line in out)[name] == (
        f"no checkpoint; pretraining stopped after epoch 1/2: resume with `rft world pretrain {name}`")
    monkeypatch.setattr(pre, "render_corpus", real)
    rc, out, err = _rft(capsys, *args)
    assert rc == 0 and any("resuming after epoch 1/2" in line for line in err), err
    assert re.fullmatch(rf"{name}: sha256 [0-9a-f]{{64}} OK \(.*\)", out[0]) and not (work / "state.pt").exists()
    rc, out, _ = _rft(capsys, "world", "pretrain", twin, "--threads", "1", "--n-eval", "20")
    assert rc == 0
    resumed, whole = (load_state_dict(load_world(n).checkpoint) for n in (name, twin))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    rc, out, _ = _rft(capsys, "world", "verify", name, twin)
    assert rc == 0 and len(out) == 2
