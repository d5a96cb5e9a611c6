"""Paper-scale data sets on fake data written in the real formats (rftlib.worlds.paperdata)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rftlib.worlds import paperdata as P
from rftlib.errors import DataNotFoundError, ParameterError
from rftlib.core.evaluation import evaluate_split
from rftlib.worlds.templates import class_indices, wnids

WNIDS = wnids("imagenet")


def write_images(folder: Path, n: int, ext: str = ".JPEG", size=(8, 6), color=(10, 200, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG"}[ext.lower()]
    for i in range(n):
        Image.new("RGB", size, color).save(folder / f"img_{i:03d}{ext}", format=fmt)


def labels_by_folder(ds) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for path, label in ds.samples:
        out.setdefault(Path(path).parent.name, set()).add(label)
    return out


class ConstantLogits(nn.Module):
    """Returns the same logits for every input (to test projections end to end)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


# --- ImageNet and its shifts -----------------------------------------------------------------------

def test_imagenet_val_wnid_folders_get_their_index(tmp_path):
    for i in (0, 1, 999):
        write_images(tmp_path / "imagenet" / "val" / WNIDS[i], 2)
    ds = P.ImageNet(tmp_path, split="val")
    assert labels_by_folder(ds) == {WNIDS[0]: {0}, WNIDS[1]: {1}, WNIDS[999]: {999}}
    x, y = ds[0]
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32 and y == 0
    # root may also be the data set's own folder
    assert P.ImageNet(tmp_path / "imagenet", split="val").samples == ds.samples


def test_imagenet_train_per_class_subset_is_seeded(tmp_path):
    for i in (3, 7, 500):
        write_images(tmp_path / "imagenet" / "train" / WNIDS[i], 6)
    full = P.ImageNet(tmp_path, split="train")
    assert len(full) == 18
    a = P.ImageNet(tmp_path, split="train", per_class=2, seed=0)
    b = P.ImageNet(tmp_path, split="train", per_class=2, seed=0)
    c = P.ImageNet(tmp_path, split="train", per_class=2, seed=1)
    assert len(a) == 6 and a.samples == b.samples and a.samples != c.samples
    assert sorted(a.targets) == [3, 3, 7, 7, 500, 500]
    assert set(a.samples) <= set(full.samples)
    assert len(P.ImageNet(tmp_path, split="train", per_class=100)) == 18


def test_imagenet_rejects_stray_folder_and_bad_arguments(tmp_path):
    write_images(tmp_path / "imagenet" / "val" / WNIDS[5], 1)
    write_images(tmp_path / "imagenet" / "val" / "not_a_wnid", 1)
    with pytest.raises(ParameterError, match="not_a_wnid"):
        len(P.ImageNet(tmp_path))
    with pytest.raises(ParameterError, match="split='test'.*allowed"):
        P.ImageNet(tmp_path, split="test")
    with pytest.raises(ParameterError, match="per_class"):
        P.ImageNet(tmp_path, per_class=0)


def test_imagenet_v2_numeric_folders_map_to_same_index_as_wnids(tmp_path):
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for i in (0, 1, 417, 999):
        write_images(v2 / str(i), 2, ext=".jpeg")
        write_images(tmp_path / "imagenet" / "val" / WNIDS[i], 1)
    ds = P.ImageNetV2(tmp_path)
    assert labels_by_folder(ds) == {"0": {0}, "1": {1}, "417": {417}, "999": {999}}
    inet = P.ImageNet(tmp_path)
    assert {WNIDS.index(k): v for k, v in labels_by_folder(inet).items()} == {
        int(k): v for k, v in labels_by_folder(ds).items()}
    with pytest.raises(ParameterError, match="variant"):
        P.ImageNetV2(tmp_path, variant="matched")


def test_imagenet_v2_other_variant_folder(tmp_path):
    write_images(tmp_path / "imagenetv2-top-images-format-val" / "12", 1, ext=".jpeg")
    assert P.ImageNetV2(tmp_path, variant="top-images").targets == [12]


def test_imagenet_sketch(tmp_path):
    write_images(tmp_path / "sketch" / WNIDS[42], 3)
    ds = P.get_dataset("imagenet-sketch", tmp_path)
    assert ds.targets == [42, 42, 42] and ds.class_subset is None


@pytest.mark.parametrize("name,cls,folder", [("imagenet-r", P.ImageNetR, "imagenet-r"),
                                              ("imagenet-a", P.ImageNetA, "imagenet-a")])
def test_200_class_sets_map_labels_and_project_logits(tmp_path, name, cls, folder):
    subset = class_indices(name)
    first, last = subset[0], subset[-1]
    write_images(tmp_path / folder / WNIDS[first], 3, ext=".jpg")
    write_images(tmp_path / folder / WNIDS[last], 3, ext=".jpg")
    (tmp_path / folder / "README.txt").write_text("ImageNet-A/R ship a README next to the class folders")
    ds = cls(tmp_path)
    assert labels_by_folder(ds) == {WNIDS[first]: {first}, WNIDS[last]: {last}}
    assert ds.class_subset == subset

    # the projection picks exactly the subset's columns, in order
    sub = P.SubsetLogits(nn.Identity(), ds.class_subset)
    assert sub.project(torch.arange(1000.0).unsqueeze(0)).squeeze(0).long().tolist() == subset
    assert sub.map_labels(torch.tensor([first, last])).tolist() == [0, 199]

    # end to end with the evaluator: the classifier's favourite class (0, tench) is in neither set,
    # so only the projected model predicts `last` (its best class within the subset)
    logits = torch.full((1, 1000), -5.0)
    logits[0, 0], logits[0, last] = 10.0, 3.0
    model = ConstantLogits(logits)
    assert evaluate_split(model, ds, batch_size=4)["accuracy"] == 0.0
    model_s, ds_s = P.apply_class_subset(model, ds)
    assert sorted(y for _, y in ds_s) == [0, 0, 0, 199, 199, 199]
    row = evaluate_split(model_s, ds_s, batch_size=4)
    assert row["accuracy"] == pytest.approx(0.5) and row["n"] == 6


def test_200_class_sets_reject_a_wnid_outside_the_subset(tmp_path):
    assert 0 not in class_indices("imagenet-r")
    write_images(tmp_path / "imagenet-r" / WNIDS[1], 1, ext=".jpg")
    write_images(tmp_path / "imagenet-r" / WNIDS[0], 1, ext=".jpg")  # tench is not in ImageNet-R
    with pytest.raises(ParameterError, match=WNIDS[0]):
        len(P.ImageNetR(tmp_path))


def framed_png(folder: Path, n: int, size: int = 12) -> None:
    """ObjectNet-like PNGs: a 2-px red frame around a blue picture."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (size, size), (255, 0, 0))
        img.paste(Image.new("RGB", (size - 4, size - 4), (0, 0, 255)), (2, 2))
        img.save(folder / f"{i:02d}.png")


def test_objectnet_maps_folders_to_imagenet_groups_and_crops_border(tmp_path):
    images = tmp_path / "objectnet-1.0" / "images"
    framed_png(images / "alarm_clock", 2)   # analog clock 409, digital clock 530
    framed_png(images / "chair", 2)         # barber 423, folding 559, rocking 765
    framed_png(images / "squeegee", 2)      # not an ImageNet class: skipped
    ds = P.get_dataset("objectnet", tmp_path)
    assert labels_by_folder(ds) == {"alarm_clock": {409}, "chair": {423}}
    assert ds.classes == ["alarm_clock", "chair"]
    x, _ = ds[0]
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[2], torch.ones(8, 8)) and x[0].max() == 0  # frame gone: all blue
    uncropped, _ = P.ObjectNet(tmp_path, border=0)[0]
    assert uncropped.shape == (3, 12, 12) and uncropped[0, 0, 0] == 1.0

    groups = ds.class_subset
    assert len(groups) == 113 and (409, 530) in groups and (423, 559, 765) in groups
    chair = groups.index((423, 559, 765))
    sub = P.SubsetLogits(nn.Identity(), groups)
    logits = torch.zeros(1, 1000)
    logits[0, 765] = 4.0  # "rocking chair" scores the ObjectNet class "chair"
    out = sub.project(logits)
    assert out.shape == (1, 113) and out.argmax().item() == chair and out[0, chair] == 4.0
    assert sub.map_labels(torch.tensor([423, 559, 765])).tolist() == [chair] * 3

    model_s, ds_s = P.apply_class_subset(ConstantLogits(logits), ds)
    assert evaluate_split(model_s, ds_s, batch_size=3)["accuracy"] == pytest.approx(0.5)


def test_objectnet_user_mapping_file(tmp_path):
    images = tmp_path / "objectnet-1.0" / "images"
    framed_png(images / "squeegee", 1)
    framed_png(images / "chair", 1)
    mapping = tmp_path / "my_mapping.json"
    mapping.write_text(json.dumps({"squeegee": ["n01440764"], "chair": [423, "n04099969"]}))
    ds = P.ObjectNet(tmp_path, mapping=mapping)
    assert labels_by_folder(ds) == {"squeegee": {0}, "chair": {423}}
    assert ds.class_subset == [(423, 765), (0,)]

    missing = P.ObjectNet(tmp_path, mapping=tmp_path / "absent.json")  # lazy
    with pytest.raises(DataNotFoundError, match="absent.json"):
        len(missing)
    mapping.write_text(json.dumps({"a": [1], "b": [1]}))
    with pytest.raises(ParameterError, match="both"):
        P.objectnet_mapping(mapping)
    with pytest.raises(ParameterError, match="outside"):
        P.objectnet_mapping({"a": [1000]})


@pytest.mark.parametrize("name,expected", [
    ("imagenet", "imagenet/val"), ("imagenet-v2", "imagenetv2-matched-frequency-format-val"),
    ("imagenet-sketch", "sketch"), ("imagenet-r", "imagenet-r"), ("imagenet-a", "imagenet-a"),
    ("objectnet", "objectnet-1.0/images"), ("cifar10", "cifar-10-batches-py"),
    ("cifar10.1", "CIFAR-10.1"), ("cifar10.2", "CIFAR-10.2"),
])
def test_missing_data_is_lazy_and_names_the_path(tmp_path, name, expected):
    root = tmp_path / "data"
    ds = P.get_dataset(name, root)  # constructing never touches the disk
    with pytest.raises(DataNotFoundError) as err:
        len(ds)
    msg = str(err.value)
    assert str(root / expected) in msg and "Get it" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_folder_without_images_is_reported(tmp_path):
    (tmp_path / "imagenet-r" / WNIDS[1]).mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        len(P.ImageNetR(tmp_path))


def test_generic_image_folder_and_transform(tmp_path):
    write_images(tmp_path / "b", 2, ext=".png")
    write_images(tmp_path / "a", 1, ext=".jpg")
    ds = P.ImageFolderDataset(tmp_path, transform=lambda img: torch.tensor(img.size))
    assert ds.classes == ["a", "b"] and ds.targets == [0, 1, 1]
    assert ds[0][0].tolist() == [8, 6]
    mapped = P.ImageFolderDataset(tmp_path, class_to_label={"b": 5}, unknown="skip")
    assert mapped.targets == [5, 5]


# --- CIFAR -----------------------------------------------------------------------------------------

def cifar_batch(n: int, labels: list[int], bytes_keys: bool) -> dict:
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, :1024] = 255          # red plane
    data[:, 2048:] = np.arange(n, dtype=np.uint8)[:, None]  # blue plane = image number
    d = {"data": data, "labels": labels, "batch_label": "fake batch"}
    return {k.encode(): v for k, v in d.items()} if bytes_keys else d


def write_cifar10(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(cifar_batch(4, [i % 10, 0, 1, 2], bytes_keys=True), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(cifar_batch(3, [9, 8, 7], bytes_keys=False), f, protocol=2)


def test_cifar10_pickles_shapes_dtypes_labels(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    test = P.get_dataset("cifar10", tmp_path)
    images, labels = test.arrays()
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert test.targets == [9, 8, 7]
    x, y = test[2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int) and y == 7
    assert x[0].min() == 1.0 and x[1].max() == 0.0 and x[2, 0, 0] == pytest.approx(2 / 255)
    train = P.CIFAR10(tmp_path, split="train")
    assert len(train) == 20 and train.targets[:4] == [1, 0, 1, 2] and train.targets[-4] == 5
    loader_x, loader_y = next(iter(torch.utils.data.DataLoader(train, batch_size=20)))
    assert loader_x.shape == (20, 3, 32, 32) and loader_y.dtype == torch.int64


class _Exploit:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_refuses_pickles_that_name_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Exploit()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        len(P.CIFAR10(tmp_path))


def test_cifar10_1_npy(tmp_path):
    folder = tmp_path / "CIFAR-10.1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "cifar10.1_v6_data.npy", data)
    np.save(folder / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3, 9]))
    ds = P.get_dataset("cifar10.1", tmp_path)
    x, y = ds[4]
    assert len(ds) == 5 and x.shape == (3, 32, 32) and y == 9
    assert torch.allclose(x, torch.from_numpy(data[4]).permute(2, 0, 1).float() / 255)
    assert P.CIFAR101(folder).targets == [0, 1, 2, 3, 9]  # the folder itself as root
    with pytest.raises(DataNotFoundError, match="cifar10.1_v4_data.npy"):
        len(P.CIFAR101(tmp_path, version="v4"))


def test_cifar10_1_rejects_bad_labels(tmp_path):
    np.save(tmp_path / "cifar10.1_v6_data.npy", np.zeros((2, 32, 32, 3), np.uint8))
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.array([0, 10]))
    with pytest.raises(ParameterError, match="outside 0..9"):
        len(P.CIFAR101(tmp_path))


def test_cifar10_2_npz_and_legacy_pickle(tmp_path):
    folder = tmp_path / "CIFAR-10.2"
    folder.mkdir()
    images = np.full((4, 32, 32, 3), 7, dtype=np.uint8)
    np.savez(folder / "cifar102_test.npz", images=images, labels=np.array([3, 1, 4, 1]),
             label_names=np.array(["airplane", "automobile"]))
    ds = P.get_dataset("cifar10.2", tmp_path)
    assert len(ds) == 4 and ds.targets == [3, 1, 4, 1] and ds[0][0].shape == (3, 32, 32)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    np.save(legacy / "cifar102_test.npy", np.array({"images": images, "labels": np.array([5, 5, 5, 5])}),
            allow_pickle=True)
    with pytest.raises(DataNotFoundError, match="allow_pickle=True"):
        len(P.CIFAR102(legacy))
    assert P.CIFAR102(legacy, allow_pickle=True).targets == [5, 5, 5, 5]


# --- registry --------------------------------------------------------------------------------------

def test_registry_names_and_errors(tmp_path):
    assert P.dataset_names() == sorted(["imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch",
                                        "objectnet", "cifar10", "cifar10.1", "cifar10.2"])
    with pytest.raises(ParameterError, match=r"known: \['cifar10'.*close: \['imagenet-a'"):
        P.get_dataset("imagenet-aa", tmp_path)
    with pytest.raises(ParameterError, match="split='train'"):
        P.get_dataset("imagenet-r", tmp_path, split="train")
    assert P.get_dataset("imagenet", tmp_path).split == "val"
    assert P.get_dataset("cifar10", tmp_path).split == "test"
    assert P.get_dataset("imagenet", tmp_path, split="train", per_class=3).per_class == 3
    splits = P.paper_splits("imagenet", tmp_path)
    assert list(splits) == ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-sketch", "imagenet-a", "objectnet"]
    with pytest.raises(ParameterError, match="scale"):
        P.paper_splits("mnist", tmp_path)


def test_subset_logits_validation():
    with pytest.raises(ParameterError, match="more than one"):
        P.SubsetLogits(nn.Identity(), [1, (1, 2)])
    with pytest.raises(ParameterError, match="at least one"):
        P.SubsetLogits(nn.Identity(), [])
    sub = P.SubsetLogits(nn.Identity(), [3, 5])
    with pytest.raises(ParameterError, match="at least 6 columns"):
        sub.project(torch.zeros(2, 4))
    with pytest.raises(ParameterError, match=r"\[4\]"):
        sub.map_labels(torch.tensor([3, 4]))
    x, y = torch.zeros(2, 1), torch.tensor([5, 3])
    model, (x2, y2) = P.apply_class_subset(nn.Linear(1, 6), (x, y), [3, 5])
    assert model(x2).shape == (2, 2) and y2.tolist() == [1, 0]
