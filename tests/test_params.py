"""Parameter objects of the study steps, notebook parameters, parameter files and overrides (no kernel)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rftlib.book.params import (apply_overrides, format_parameters, load_param_file, notebook_parameters,
                                parse_override, validate_params)
from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_root
from rftlib.steps import STEPS

FIXTURES = Path(__file__).parent / "fixtures"
DUMMY = FIXTURES / "dummy.ipynb"
NO_RESULTS = "/nonexistent/params/interpolate"

#: A bad value for every field of every step (the message must name the field).
BAD = {"world": "mars", "recreate": 1, "epochs": 0, "n_eval": 0, "out_dir": 3, "grid": "no/such.yaml",
       "runs": ["no-such-run"], "runs_root": "", "force": "yes", "n_alpha": 1, "n_boot": 0, "seed": -1,
       "interpolate_dir": 7, "stragglers_dir": 7, "select": "best", "max_runs": 0, "granularity": "layer",
       "hold": "neither", "rank_by": "sharpness", "k": 0, "controls": "no", "kind": "best", "norm": "l1",
       "adaptive": 0, "rhos": [], "rho_claims": -1.0, "n_examples": 0, "m": 0, "n_iters": 0, "logit_norm": 2,
       "ps": [1.0], "interventions": ["mask_all"], "sharpness_p": 1.0, "rho": 0.0,
       "sharpness_dir": 7, "sparsity_dir": 7, "n_perm": 0}


@pytest.mark.parametrize("stem", list(STEPS))
def test_defaults_validate_and_every_field_is_documented(stem):
    cls = STEPS[stem]
    cls(interpolate_dir=NO_RESULTS) if "interpolate_dir" in cls.names() else cls()
    assert all(doc.strip() for doc in cls.docs().values())
    specs = notebook_parameters(repo_root() / "notebooks" / f"{stem}.ipynb")
    assert list(specs) == cls.names()
    assert {k: s.default for k, s in specs.items()} == cls.defaults()


@pytest.mark.parametrize("stem,name", [(s, f.name) for s, c in STEPS.items() for f in dataclasses.fields(c)])
def test_a_bad_value_of_each_field_is_rejected_naming_it(stem, name):
    with pytest.raises(ParameterError) as e:
        STEPS[stem].from_mapping({name: BAD[name]})
    assert f"{name}=" in str(e.value) or f"{name}[" in str(e.value)


def test_unknown_name_and_list_hint():
    with pytest.raises(ParameterError, match=r"unknown parameter 'rho_claim' \(did you mean 'rho_claims'\?\)"):
        validate_params("notebooks/sharpness.ipynb", {"rho_claim": 0.004, "interpolate_dir": NO_RESULTS})
    with pytest.raises(ParameterError, match=r"rhos='0.1' is not a list of numbers \(did you mean \[0.1\]\?\)"):
        STEPS["sharpness"].from_mapping({"rhos": "0.1"})


def test_rho_claims_is_the_measured_float_and_k_is_checked_at_every_granularity():
    p = STEPS["sharpness"](rhos=[0.1 + 0.2], rho_claims=0.3, interpolate_dir=NO_RESULTS)
    assert p.rho_claims == 0.1 + 0.2
    with pytest.raises(ParameterError, match=r"k=100000 exceeds the \d+ layers .* at tensor granularity"):
        STEPS["stragglers"](k=100000, granularity="tensor")


def test_dirs_follow_the_world():
    p = STEPS["sparsity"](world="digits")
    assert p.interpolate_dir == "book/results/digits-interpolate" and p.out_dir == "book/results/digits-sparsity"


def test_plain_notebook_names_and_types():
    assert validate_params(DUMMY, {"alpha": 1, "layers": (1, 2)}) == {"alpha": 1.0, "layers": [1, 2]}
    with pytest.raises(ParameterError, match=r"unknown parameter 'epoch' .*did you mean 'epochs'"):
        validate_params(DUMMY, {"epoch": 3})
    with pytest.raises(ParameterError, match=r"parameter 'epochs' must be int, got float 2.5"):
        validate_params(DUMMY, {"epochs": 2.5})
    assert notebook_parameters(FIXTURES / "noparams.ipynb") == {}
    assert "alpha" in format_parameters(DUMMY)


def test_overrides_are_yaml_scalars():
    assert parse_override("lr=1e-3") == ("lr", 0.001)
    assert parse_override("name=no") == ("name", "no")
    assert apply_overrides({"a": 1}, ["a=2", "b=[1, 2]"]) == {"a": 2, "b": [1, 2]}
    for bad in ("novalue", "=3", "1x=2", "a=[1,"):
        with pytest.raises(ParameterError):
            parse_override(bad)


def test_shipped_pipelines_validate():
    for name in ("quick", "default"):
        pf = load_param_file(name)
        for step in pf.steps:
            params = pf.parameters_for(step)
            if Path(step.notebook).stem == "sharpness" and not (repo_root() / params["interpolate_dir"] / "curves.csv").is_file():
                params["interpolate_dir"] = NO_RESULTS
            validate_params(step.notebook, params)
