"""Parameter cells, parameter files, overrides and validation (no kernel is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rftlib.errors import ParameterError
from rftlib.book.params import (
    apply_overrides,
    format_parameters,
    load_param_file,
    notebook_parameters,
    parse_override,
    parse_parameters_source,
    validate_params,
)

FIXTURES = Path(__file__).parent / "fixtures"
DUMMY = FIXTURES / "dummy.ipynb"


def test_reads_names_defaults_types_and_comments():
    specs = notebook_parameters(DUMMY)
    assert list(specs)[:4] == ["alpha", "epochs", "world", "layers"]
    assert specs["alpha"].default == 0.5 and str(specs["alpha"].type) == "float"
    assert str(specs["layers"].type) == "list[int]"
    assert str(specs["budget"].type) == "int | None"
    assert "interpolation coefficient" in specs["alpha"].help
    table = format_parameters(DUMMY)
    assert "alpha" in table and "interpolation coefficient" in table


def test_notebook_without_parameters_cell():
    assert notebook_parameters(FIXTURES / "noparams.ipynb") == {}
    with pytest.raises(ParameterError, match="unknown parameter 'x'"):
        validate_params(FIXTURES / "noparams.ipynb", {"x": 1})


def test_unknown_name_lists_close_match_and_allowed_names():
    with pytest.raises(ParameterError) as e:
        validate_params(DUMMY, {"epoch": 3})
    msg = str(e.value)
    assert "unknown parameter 'epoch'" in msg and "did you mean 'epochs'" in msg
    assert "allowed: alpha, epochs, world" in msg


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"alpha": "high"}, "parameter 'alpha' must be float, got str 'high'"),
        ({"epochs": 2.5}, "parameter 'epochs' must be int, got float 2.5"),
        ({"epochs": True}, "parameter 'epochs' must be int, got bool True"),
        ({"fail": 1}, "parameter 'fail' must be bool, got int 1"),
        ({"layers": [0, "x"]}, "parameter 'layers' must be list[int]"),
        ({"layers": 3}, "parameter 'layers' must be list[int], got int 3"),
        ({"budget": "ten"}, "parameter 'budget' must be int | None"),
        ({"world": 7}, "quote it"),
    ],
)
def test_wrong_types_name_parameter_value_and_type(params, fragment):
    with pytest.raises(ParameterError, match=None) as e:
        validate_params(DUMMY, params)
    assert fragment in str(e.value)


def test_valid_values_are_coerced():
    out = validate_params(DUMMY, {"alpha": 1, "epochs": 3, "layers": (1, 2), "budget": None, "world": "mnist"})
    assert out == {"alpha": 1.0, "epochs": 3, "layers": [1, 2], "budget": None, "world": "mnist"}
    assert isinstance(out["alpha"], float)


def test_none_default_accepts_anything():
    specs = parse_parameters_source("x = None  # anything")
    from rftlib.book.params import check_params

    assert check_params(specs, {"x": [1, "a"]}) == {"x": [1, "a"]}


def test_several_problems_reported_together():
    with pytest.raises(ParameterError) as e:
        validate_params(DUMMY, {"alpah": 0.1, "epochs": "many"})
    assert "did you mean 'alpha'" in str(e.value) and "'epochs' must be int" in str(e.value)


def test_non_literal_parameter_is_rejected():
    with pytest.raises(ParameterError, match="not a literal"):
        parse_parameters_source("import math\nx = math.pi  # float")


def test_overrides_are_yaml_scalars():
    assert parse_override("lr=1e-3") == ("lr", 0.001)
    assert parse_override("flag=true") == ("flag", True)
    assert parse_override("name=no") == ("name", "no")  # YAML 1.2: not a boolean
    assert parse_override("x=") == ("x", None)
    assert apply_overrides({"a": 1}, ["a=2", "b=[1, 2]"]) == {"a": 2, "b": [1, 2]}
    for bad in ("novalue", "=3", "1x=2", "a=[1,"):
        with pytest.raises(ParameterError):
            parse_override(bad)


def test_extra_checks_hook():
    def check(p):
        if p["alpha"] > 1:
            raise ValueError(f"alpha must be in [0, 1], got {p['alpha']}")

    validate_params(DUMMY, {"alpha": 0.2}, extra_checks=check)
    with pytest.raises(ParameterError, match=r"alpha must be in \[0, 1\], got 1.5"):
        validate_params(DUMMY, {"alpha": 1.5}, extra_checks=check)
    with pytest.raises(ParameterError, match="cannot be loaded"):
        validate_params(DUMMY, {}, extra_checks="rftlib.nothing_here:check")


def _write(d: Path, name: str, text: str) -> None:
    (d / f"{name}.yaml").write_text(text)


def test_param_file_forms(tmp_path):
    _write(tmp_path, "flat", "alpha: 0.3\nepochs: 1\n")
    _write(tmp_path, "one", f"notebook: {DUMMY}\nparameters: {{alpha: 0.4}}\nvalidate: mod:fn\ntimeout: 60\n")
    _write(
        tmp_path,
        "pipe",
        f"defaults: {{seed: 7, unknown_elsewhere: 1}}\nsteps:\n"
        f"  - name: first\n    notebook: {DUMMY}\n    parameters: {{alpha: 0.1}}\n"
        f"  - name: second\n    notebook: {FIXTURES / 'noparams.ipynb'}\n",
    )
    flat = load_param_file("flat", params_dir=tmp_path)
    assert not flat.is_pipeline and flat.step_for(DUMMY).parameters == {"alpha": 0.3, "epochs": 1}
    one = load_param_file("one", params_dir=tmp_path)
    s = one.step_for(DUMMY)
    assert s.parameters == {"alpha": 0.4} and s.validate == "mod:fn" and s.timeout == 60.0
    with pytest.raises(ParameterError, match="has no parameters for"):
        one.step_for(FIXTURES / "noparams.ipynb")
    pipe = load_param_file("pipe", params_dir=tmp_path)
    assert pipe.is_pipeline and pipe.step_names() == ["first", "second"]
    first = pipe.step_for(DUMMY)
    # defaults go only to notebooks that declare them
    assert pipe.parameters_for(first) == {"seed": 7, "alpha": 0.1}
    assert pipe.parameters_for(pipe.get_step("second")) == {}
    with pytest.raises(ParameterError, match="did you mean 'first'"):
        pipe.get_step("frist")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("steps: []\n", "non-empty list"),
        ("steps:\n  - parameters: {a: 1}\n", "needs 'notebook'"),
        ("steps:\n  - notebook: a.ipynb\n    parameter: {a: 1}\n", "unknown key(s) 'parameter'"),
        ("steps:\n  - notebook: a.ipynb\n  - notebook: a.ipynb\n", "duplicate step name"),
        ("steps:\n  - notebook: a.ipynb\nepochs: 3\n", "unknown top-level key(s) 'epochs'"),
        ("parameters: [1, 2]\n", "must be a mapping"),
        ("a: [1,\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_param_files(tmp_path, text, fragment):
    _write(tmp_path, "bad", text)
    with pytest.raises(ParameterError) as e:
        load_param_file("bad", params_dir=tmp_path)
    assert fragment in str(e.value)


def test_missing_param_file_suggests_names(tmp_path):
    _write(tmp_path, "quick", "a: 1\n")
    with pytest.raises(ParameterError, match="did you mean 'quick'.*available: quick"):
        load_param_file("quik", params_dir=tmp_path)


def test_type_declared_in_comment():
    specs = parse_parameters_source(
        "runs = []  # list[str]: run names\n"
        "n = None  # int or None: a count\n"
        "scale = 1  # float: a scale\n"
        "note = 'x'  # Note: not a type\n"
        "odd = 0.5  # int: contradicts the default, so the default's type wins\n"
    )
    assert {k: str(s.type) for k, s in specs.items()} == {
        "runs": "list[str]", "n": "int | None", "scale": "float", "note": "str", "odd": "float"}
    from rftlib.book.params import check_params

    with pytest.raises(ParameterError, match="'runs' must be list\\[str\\], got list \\[1\\]"):
        check_params(specs, {"runs": [1]})
    assert check_params(specs, {"scale": 2, "n": 3}) == {"scale": 2.0, "n": 3}
