"""Prompt templates, class names and wnid lists shipped as package data (rftlib.worlds.templates)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rftlib.worlds import templates as T
from rftlib.errors import ParameterError


def test_imagenet_lists_have_openai_sizes_and_anchors():
    names, temps = T.classnames("imagenet"), T.templates("imagenet")
    assert len(names) == 1000 and len(temps) == 80
    assert names[0] == "tench" and names[999] == "toilet paper"
    # OpenAI's cleaned names disambiguate the two "crane"s and the two "maillot"s
    assert (names[134], names[517]) == ("crane bird", "construction crane")
    assert (names[638], names[639]) == ("tights", "one-piece bathing suit")
    assert names[21] == "kite (bird of prey)" and names[677] == "metal nail"
    # OpenAI's list repeats exactly two names
    assert sorted(k for k, v in Counter(names).items() if v > 1) == ["missile", "sunglasses"]
    assert temps[0] == "a bad photo of a {}." and temps[-1] == "a tattoo of the {}."
    assert T.templates("imagenet-simple") == [
        "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
        "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    ]


def test_imagenet_lists_match_open_clip_copy():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    assert T.classnames("imagenet") == list(IMAGENET_CLASSNAMES)
    assert T.templates("imagenet") == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def test_cifar10_lists():
    assert T.classnames("cifar10") == ["airplane", "automobile", "bird", "cat", "deer",
                                       "dog", "frog", "horse", "ship", "truck"]
    temps = T.templates("cifar10")
    assert len(temps) == 18 and len(set(temps)) == 18
    assert temps[0] == "a photo of a {}." and temps[-1] == "a photo of the big {}."


@pytest.mark.parametrize("name", ["imagenet", "imagenet-simple", "cifar10"])
def test_every_template_has_one_slot(name):
    for t in T.templates(name):
        assert t.count("{}") == 1 and t.format("x") != t


def test_aliases_share_label_space_and_prompts():
    for alias in ("imagenet-v2", "imagenet-sketch", "objectnet"):
        assert T.classnames(alias) == T.classnames("imagenet")
        assert T.templates(alias) == T.templates("imagenet")
    for alias in ("imagenet-r", "imagenet-a"):
        assert T.templates(alias) == T.templates("imagenet")
    for alias in ("cifar10.1", "cifar10.2"):
        assert T.classnames(alias) == T.classnames("cifar10")
        assert T.templates(alias) == T.templates("cifar10")


def test_wnids_are_imagenet_index_order():
    w = T.wnids("imagenet")
    assert len(w) == 1000 and len(set(w)) == 1000 and w == sorted(w)
    assert all(re.fullmatch(r"n\d{8}", x) for x in w)
    assert w[0] == "n01440764" and w[999] == "n15075141"
    assert T.wnid_to_index()["n02012849"] == 134  # crane (bird)
    assert T.wnid_to_index()["n03126707"] == 517  # crane (construction)


@pytest.mark.parametrize("name,first,last", [
    ("imagenet-r", [1, 2, 4, 6, 8], [980, 981, 983, 988]),
    ("imagenet-a", [6, 11, 13, 15, 17], [984, 986, 987, 988]),
])
def test_200_class_subsets(name, first, last):
    idx = T.class_indices(name)
    assert len(idx) == 200 and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < 1000
    assert idx[:5] == first and idx[-4:] == last
    assert [T.wnids("imagenet")[i] for i in idx] == T.wnids(name)
    names = T.classnames(name)
    assert len(names) == 200 and names == [T.classnames("imagenet")[i] for i in idx]


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ParameterError, match="allowed.*cifar10"):
        T.templates("cifar100")
    with pytest.raises(ParameterError, match="imagenet-r"):
        T.class_indices("imagenet")
    with pytest.raises(ParameterError, match="wnid"):
        T.wnids("cifar10")
    with pytest.raises(ParameterError, match="no such list"):
        T.read_list("nope.txt")


def test_data_files_are_package_data():
    # pyproject ships rftlib/worlds/templates/*.txt; every list read above must be one of those
    files = {p.name for p in T.DATA_DIR.glob("*.txt")}
    needed = set(T._TEMPLATE_FILES.values()) | set(T._CLASSNAME_FILES.values()) | set(T._WNID_FILES.values())
    needed = {n for n in needed if not n.startswith("open_clip:")}
    assert needed | {"objectnet_to_imagenet.txt"} <= files


def test_zero_shot_head_builds_from_string_templates():
    from rftlib.models.factory import create_clip, zero_shot_weights

    clip, tok = create_clip("rft-tiny", seed=0)
    w = zero_shot_weights(clip, tok, T.classnames("cifar10"), T.templates("cifar10")[:2])
    assert w.shape[0] == 10
