"""The pre-resized copy (config `resized`): written by the real build, byte-identical on a rebuild,
leaving outputs without it as they were; decoded to its size and mode, upright; read by the loader at
its resolution (falling back to the original at another); normalized by the model like the float path;
and `verify` catching a copy that is missing, corrupt or of the wrong size."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.verify import iter_tar_samples, verify_output
from schemas.layout import RESIZE_MODES, resized_extension
from tests.helpers import COCO_SAMPLE, PAPER_PLAN, coco_captions, fill_store, run_build, write_config
from transforms.image_pixels import resize, resized_jpeg, resized_size, to_rgb

torch = pytest.importorskip("torch")

SIZE = 64
COPY = resized_extension(SIZE, "square")  # "64.jpg"
IMAGES = 6


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """Builds of the same 6 COCO images: without a copy (plain), with a square copy twice (a; b on two
    worker processes), and with a center_crop copy alone (only)."""
    root = tmp_path_factory.mktemp("resized")
    data = coco_captions()
    first = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann)
    subset = {"images": data["images"][:IMAGES], "annotations": [first[i["id"]] for i in data["images"][:IMAGES]]}
    (root / "captions.json").write_text(json.dumps(subset))
    source = {"name": "coco", "type": "coco", "captions": str(root / "captions.json"),
              "images": str(COCO_SAMPLE / "images")}
    plan = {**PAPER_PLAN, "shard_size": 4}
    square = {"image_size": SIZE, "resize_mode": "square", "quality": 90}
    configs = {"plain": {}, "a": {"resized": square}, "b": {"resized": square},
               "only": {"resized": {"image_size": SIZE, "resize_mode": "center_crop", "keep_original": False}}}
    built = {}
    for name, extra in configs.items():
        folder = root / name
        folder.mkdir()
        fill_store(folder / "store", [a["caption"] for a in subset["annotations"]], PAPER_PLAN["translation_languages"])
        workers = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing") if name == "b" else ()
        run_build(write_config(folder, [source], plan, **extra), False, *workers)
        built[name] = folder / "out"
    return built


def shards(output: Path) -> list[Path]:
    return sorted((output / "train").glob("*.tar"))


def samples(output: Path) -> list[dict]:
    """Every train sample as the loader reads it: {"__key__": key, extension: bytes}."""
    return [{"__key__": key, **members}
            for tar in shards(output) for key, members in iter_tar_samples(tar.read_bytes())]


def test_the_copy_is_byte_identical_on_a_rebuild_and_leaves_everything_else_as_without_it(outputs):
    a, b, plain = outputs["a"], outputs["b"], outputs["plain"]
    assert [p.name for p in shards(a)] == [p.name for p in shards(plain)] and len(shards(a)) == 2
    for tar_a, tar_b in zip(shards(a), shards(b)):
        assert tar_a.read_bytes() == tar_b.read_bytes()
    assert len(samples(a)) == IMAGES
    for with_copy, without in zip(samples(a), samples(plain)):
        assert set(with_copy) == {"__key__", "jpg", "json", COPY} and set(without) == {"__key__", "jpg", "json"}
        assert {k: v for k, v in with_copy.items() if k != COPY} == without
        assert with_copy[COPY] == resized_jpeg(with_copy["jpg"], SIZE, "square", 90)
    assert "resized" not in yaml.safe_load((plain / "config.yaml").read_text())
    assert yaml.safe_load((a / "config.yaml").read_text())["resized"] == {
        "image_size": SIZE, "resize_mode": "square", "quality": 90, "keep_original": True}
    for name in outputs:
        assert verify_output(str(outputs[name]), decode_images=True) == [], name


def test_a_resized_only_output_holds_the_copy_alone_named_by_its_mode(outputs):
    extension = resized_extension(SIZE, "center_crop")
    assert extension == f"{SIZE}.center_crop.jpg"
    for sample in samples(outputs["only"]):
        assert set(sample) == {"__key__", "json", extension}
        with Image.open(io.BytesIO(sample[extension])) as copy:
            assert (copy.format, copy.mode, copy.size) == ("JPEG", "RGB", (SIZE, SIZE))


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_each_mode_resizes_the_upright_image_to_its_size(mode):
    original = Image.open(sorted((COCO_SAMPLE / "images").glob("*.jpg"))[0]).convert("RGB")
    assert original.width > original.height
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown turned by 90 degrees: portrait
    buffer = io.BytesIO()
    original.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    upright = to_rgb(Image.open(io.BytesIO(data)))
    assert upright.height > upright.width
    copy_bytes = resized_jpeg(data, SIZE, mode, 95)
    assert copy_bytes == resized_jpeg(data, SIZE, mode, 95)
    copy = Image.open(io.BytesIO(copy_bytes))
    assert (copy.format, copy.mode) == ("JPEG", "RGB") and "exif" not in copy.info
    assert copy.size == resized_size(upright.width, upright.height, SIZE, mode)
    if mode == "keep_ratio":
        assert copy.width == SIZE < copy.height
    else:
        assert copy.size == (SIZE, SIZE)
    expected = np.asarray(resize(upright, SIZE, mode), dtype=np.float64)
    assert np.abs(np.asarray(copy, dtype=np.float64) - expected).mean() < 3  # JPEG's loss, in 0..255 levels


def test_the_loader_reads_the_copy_at_its_size_and_the_original_at_another(outputs):
    from model.data import decode_image, image_transform

    for sample in samples(outputs["a"]):
        copy_only = {"__key__": sample["__key__"], COPY: sample[COPY]}
        pixels = image_transform(SIZE).of_sample(sample)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, SIZE, SIZE)
        assert torch.equal(pixels, image_transform(SIZE).of_sample(copy_only))  # the copy, not the original
        other = image_transform(2 * SIZE)
        assert torch.equal(other.of_sample(sample), other(decode_image(sample, draft=4 * SIZE)))
        with pytest.raises(ValueError, match="has no image"):
            other.of_sample(copy_only)  # no copy of that size, and nothing to resize
    center_cropped = samples(outputs["only"])[0]
    with pytest.raises(ValueError, match="center_crop"):  # not Florence-2's square resize: never read as one
        image_transform(SIZE).of_sample(center_cropped)


def test_uint8_batches_normalized_by_the_model_match_the_float_path(outputs):
    from torchvision import transforms

    from model.data import (AnnotationSampler, ResumableShardStream, decode_image, image_transform, shard_urls,
                            split_key_counts)
    from model.pixels import IMAGENET_MEAN, IMAGENET_STD, normalized

    float_path = transforms.Compose([  # what the loader returned before: resized and normalized on the CPU
        transforms.Resize((SIZE, SIZE), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    transform = image_transform(SIZE)
    for sample in samples(outputs["a"]):
        reference = float_path(decode_image(sample))
        same_pixels = normalized(transform(decode_image(sample))[None])[0]
        assert torch.allclose(same_pixels, reference, atol=1e-5)
        from_copy = normalized(transform.of_sample(sample)[None])[0]
        # JPEG's loss at quality 90 on 64 px (~4 of 255 levels: 0.066 here; 1.7 levels at 224 px, quality 95)
        assert float((from_copy - reference).abs().mean()) < 0.1
    output = str(outputs["a"])
    sampler = AnnotationSampler.from_setting("uniform", split_key_counts(output, "train"))
    stream = ResumableShardStream(shard_urls(output, "train"), sampler, transform, seed=0, shuffle_buffer=4)
    images = [example.image for _, example in zip(range(4), stream)]
    assert all(image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE) for image in images)


def _rewrite(output: Path, edit) -> None:
    """Rewrite train/000000.tar with edit(name, bytes) -> bytes or None (member dropped), and make its
    index entry agree, so that only the edit is left for verify to find."""
    tar_path = output / "train" / "000000.tar"
    buffer = io.BytesIO()
    with tarfile.open(tar_path) as src, tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            data = edit(info.name, src.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(buffer.getvalue())
    index_path = output / "train.index.json"
    index = json.loads(index_path.read_text())
    for entry in index["shardlist"]:
        if entry["url"] == "train/000000.tar":
            entry["md5sum"], entry["filesize"] = hashlib.md5(buffer.getvalue()).hexdigest(), len(buffer.getvalue())
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("damage, decode, found", [
    ("missing", False, f"no resized copy ({COPY})"),
    ("truncated", True, f"resized copy ({COPY}) does not decode"),
    ("wrong size", True, f"resized copy ({COPY}) is ('JPEG', 'RGB', (32, 32)), expected ('JPEG', 'RGB', (64, 64))"),
])
def test_verify_catches_a_copy_missing_corrupt_or_of_the_wrong_size(outputs, tmp_path, damage, decode, found):
    output = tmp_path / "out"
    shutil.copytree(outputs["a"], output)
    damaged = []

    def edit(name: str, data: bytes):
        if not name.endswith(f".{COPY}") or damaged:
            return data
        damaged.append(name.split(".")[0])
        if damage == "missing":
            return None
        if damage == "truncated":
            return data[: len(data) // 2]
        return resized_jpeg(data, 32, "square", 90)

    _rewrite(output, edit)
    problems = verify_output(str(output), decode_images=decode)
    assert len(problems) == 1 and problems[0].startswith(f"train/000000.tar: {damaged[0]}: {found}"), problems


def test_the_resized_section_is_checked_and_loader_workers_default_to_the_cores_available(tmp_path, monkeypatch):
    from model.train_config import DataConfig
    from schemas.config import RunConfig
    from schemas.errors import ConfigError

    raw = yaml.safe_load(write_config(tmp_path, [{"name": "coco", "type": "coco", "captions": "c.json",
                                                  "images": "images"}]).read_text())
    for field, value in (("resize_mode", "no"), ("quality", 0), ("image_size", "224")):
        with pytest.raises(ConfigError) as refused:
            RunConfig.from_dict({**raw, "resized": {field: value}})
        assert refused.value.field == f"resized.{field}"
    assert RunConfig.from_dict({**raw, "resized": {}}).resized.image_size == 224
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert DataConfig(output=str(tmp_path)).workers == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # torchrun: the node's cores shared by its processes
    assert DataConfig(output=str(tmp_path)).workers == 1
    assert DataConfig(output=str(tmp_path), workers=0).workers == 0
