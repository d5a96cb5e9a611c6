"""Where things live in the repository, relative to its root (:func:`rftlib.files.manifest.repo_root`).

Every module names these folders through the constants here, so the layout is written down once.

Example:
    >>> RESULTS_ROOT, GRIDS_DIR
    ('book/results', 'notebooks/params/grids')
"""

#: the book's results root: a pipeline without ``results_root`` writes its step folders here
RESULTS_ROOT = "book/results"
#: parameter files (``rft pipeline NAME`` reads ``<PARAMS_DIR>/NAME.yaml``)
PARAMS_DIR = "notebooks/params"
#: grid files of fine-tuning recipes
GRIDS_DIR = f"{PARAMS_DIR}/grids"
#: the default study's pipeline file
DEFAULT_PIPELINE = f"{PARAMS_DIR}/default.yaml"

__all__ = ["DEFAULT_PIPELINE", "GRIDS_DIR", "PARAMS_DIR", "RESULTS_ROOT"]
