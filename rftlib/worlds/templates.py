"""Prompt templates, class names and WordNet ids of the paper-scale data sets (package data).

ImageNet's prompts and names come from open_clip (``open_clip.zero_shot_metadata``), which ships
OpenAI's lists; the rest live in ``rftlib/worlds/templates/*.txt``, one entry per line (lines starting with
``#`` are provenance notes). Where each comes from:

- ``imagenet`` templates (80) and class names (1000): OpenAI's CLIP prompt-engineering notebook
  (``openai/CLIP``, ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``), i.e. OpenAI's *cleaned*
  names ("crane bird" / "construction crane", "metal nail", ...), taken from ``open_clip``. Two
  names repeat exactly as in OpenAI's list (``missile``, ``sunglasses``).
- ``imagenet-simple`` templates (7): the subset OpenAI's forward selection picked (open_clip's
  ``SIMPLE_IMAGENET_TEMPLATES``).
- ``cifar10`` class names (10) and templates (18): ``openai/CLIP``, ``data/prompts.md``.
- WordNet ids: ImageNet-1k's 1000 in index order (sorted), and the 200-class subsets of ImageNet-R
  and ImageNet-A, whose ImageNet indices equal WiSE-FT's ``CLASS_SUBLIST`` lists.

The ImageNet variants share ImageNet's templates and label space (``imagenet-v2``,
``imagenet-sketch``, ``objectnet`` → ``imagenet``; ``cifar10.1``, ``cifar10.2`` → ``cifar10``).
``classnames("imagenet-r")`` / ``("imagenet-a")`` give the 200 names of the subset, in the order of
:func:`class_indices`.

Example:
    >>> len(templates("imagenet")), len(classnames("imagenet")), len(templates("cifar10"))
    (80, 1000, 18)
    >>> templates("imagenet")[0].format(classnames("imagenet")[0])
    'a bad photo of a tench.'
    >>> classnames("imagenet")[134], classnames("imagenet")[517]
    ('crane bird', 'construction crane')
    >>> wnids("imagenet")[0], class_indices("imagenet-r")[:3]
    ('n01440764', [1, 2, 4])
    >>> classnames("imagenet-r")[0] == classnames("imagenet")[1]
    True
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from rftlib.errors import ParameterError

DATA_DIR = Path(__file__).parent / "lists"

_TEMPLATE_FILES = {
    "imagenet": "open_clip:OPENAI_IMAGENET_TEMPLATES",
    "imagenet-simple": "open_clip:SIMPLE_IMAGENET_TEMPLATES",
    "cifar10": "cifar10_templates.txt",
}
_CLASSNAME_FILES = {"imagenet": "open_clip:IMAGENET_CLASSNAMES", "cifar10": "cifar10_classnames.txt"}
_WNID_FILES = {
    "imagenet": "imagenet_wnids.txt",
    "imagenet-r": "imagenet_r_wnids.txt",
    "imagenet-a": "imagenet_a_wnids.txt",
}
# data sets that share another's label space and prompts
ALIASES = {
    "imagenet-v2": "imagenet",
    "imagenet-sketch": "imagenet",
    "objectnet": "imagenet",
    "cifar10.1": "cifar10",
    "cifar10.2": "cifar10",
}
SUBSETS = ("imagenet-r", "imagenet-a")


@lru_cache(maxsize=None)
def read_list(filename: str) -> tuple[str, ...]:
    """Entries of ``rftlib/worlds/templates/<filename>`` (one per line, ``#`` lines skipped), or of an
    open_clip list named ``open_clip:NAME`` (its template callables become ``{}`` patterns).

    Example:
        >>> read_list("cifar10_classnames.txt")[:3]
        ('airplane', 'automobile', 'bird')
        >>> read_list("open_clip:SIMPLE_IMAGENET_TEMPLATES")[0]
        'itap of a {}.'
    """
    if filename.startswith("open_clip:"):
        import open_clip.zero_shot_metadata as meta

        items = getattr(meta, filename.split(":", 1)[1])
        return tuple(t("{}") if callable(t) else str(t) for t in items)
    path = DATA_DIR / filename
    if not path.is_file():
        raise ParameterError(f"filename={filename!r}: no such list in {DATA_DIR}; have {sorted(p.name for p in DATA_DIR.glob('*.txt'))}.")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def _resolve(name: str, known: dict[str, str] | tuple[str, ...], what: str, extra: tuple[str, ...] = ()) -> str:
    canonical = ALIASES.get(name, name)
    if canonical in known:
        return canonical
    allowed = sorted(set(known) | set(extra) | {a for a, c in ALIASES.items() if c in known})
    close = difflib.get_close_matches(str(name), allowed, n=3)
    raise ParameterError(f"name={name!r} has no {what}; allowed: {allowed}" + (f" (close: {close})." if close else "."))


def templates(name: str) -> list[str]:
    """Prompt templates of a data set, each a ``str.format`` pattern with one ``{}``.

    Args:
        name: ``imagenet`` (OpenAI's 80), ``imagenet-simple`` (OpenAI's selected 7), ``cifar10``
            (OpenAI's 18), or an alias sharing them (``imagenet-v2``, ``imagenet-r``,
            ``imagenet-a``, ``imagenet-sketch``, ``objectnet``, ``cifar10.1``, ``cifar10.2``).

    Example:
        >>> templates("objectnet") == templates("imagenet")
        True
    """
    resolved = "imagenet" if name in SUBSETS else _resolve(name, _TEMPLATE_FILES, "prompt templates", SUBSETS)
    return list(read_list(_TEMPLATE_FILES[resolved]))


def classnames(name: str) -> list[str]:
    """Class names for zero-shot heads, in label order.

    ``imagenet`` (and aliases): OpenAI's 1000 cleaned names; ``cifar10`` (and aliases): 10 names;
    ``imagenet-r`` / ``imagenet-a``: the 200 names of the subset, in :func:`class_indices` order.

    Example:
        >>> classnames("cifar10.1")[:2]
        ['airplane', 'automobile']
        >>> len(classnames("imagenet-a"))
        200
    """
    if name in SUBSETS:
        names = read_list(_CLASSNAME_FILES["imagenet"])
        return [names[i] for i in class_indices(name)]
    return list(read_list(_CLASSNAME_FILES[_resolve(name, _CLASSNAME_FILES, "class names", SUBSETS)]))


def wnids(name: str) -> list[str]:
    """WordNet ids: ``imagenet`` (1000, index order) or the 200 of ``imagenet-r`` / ``imagenet-a``.

    Example:
        >>> wnids("imagenet-a")[0]
        'n01498041'
    """
    if name not in _WNID_FILES:
        raise ParameterError(f"name={name!r} has no wnid list; allowed: {sorted(_WNID_FILES)}.")
    return list(read_list(_WNID_FILES[name]))


@lru_cache(maxsize=None)
def wnid_to_index() -> dict[str, int]:
    """ImageNet-1k class index of each wnid (the sorted order of ImageNet's ``train/`` folders).

    Example:
        >>> wnid_to_index()["n01440764"], wnid_to_index()["n15075141"]
        (0, 999)
    """
    return {w: i for i, w in enumerate(read_list(_WNID_FILES["imagenet"]))}


def class_indices(name: str) -> list[int]:
    """ImageNet-1k indices of the 200 classes of ``imagenet-r`` or ``imagenet-a`` (ascending).

    Example:
        >>> idx = class_indices("imagenet-a")
        >>> len(idx), idx[:4], idx[-1]
        (200, [6, 11, 13, 15], 988)
    """
    if name not in SUBSETS:
        raise ParameterError(f"name={name!r} has no ImageNet class subset; allowed: {list(SUBSETS)}.")
    table = wnid_to_index()
    return [table[w] for w in wnids(name)]
