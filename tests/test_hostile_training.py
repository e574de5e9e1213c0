"""Hostile inputs on the training side. Checkpoints: a run folder from someone else (a planted pickle,
a `latest` pointer leading out of the folder, truncated or malformed state files, another model's
checkpoint) is resumed by the real `florenz-train` in its own process, and must fail with one clear
line or be ignored, never run code. Images: the loader's decode keeps what the file holds (EXIF orientation, 16-bit grey, alpha)."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from tests.helpers import COCO_SAMPLE, require_coco_sample  # noqa: E402
from tests.hostile import CliResult, expect, run_cli  # noqa: E402
from tests.train_support import paper, train_config  # noqa: E402,F401 (paper: a fixture)

STEPS = {"optim.steps": 4, "run.checkpoint_every": 2, "run.eval_every": 100, "data.eval_images": 4}
CHECKPOINT = "step-00000002"
STATE_JSON, STATE_TENSORS, OLD_PICKLE = "training_state.json", "training_state.safetensors", "training_state.pt"


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, paper) -> Path:
    """A run folder stopped at step 2 of 4 by the real CLI: checkpoints/step-00000002 and `latest`."""
    root = tmp_path_factory.mktemp("trained")
    result = train(train_config(root, *paper, **STEPS), "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "run" / "checkpoints" / "latest").read_text() == CHECKPOINT
    return root / "run"


@pytest.fixture
def run(tmp_path, paper, trained) -> tuple[Path, Path]:
    """(config, checkpoints folder) of a fresh copy of the stopped run, to tamper with."""
    config = train_config(tmp_path, *paper, **STEPS)
    shutil.copytree(trained, tmp_path / "run")
    return config, tmp_path / "run" / "checkpoints"


def train(config: Path, *extra: str) -> CliResult:
    return run_cli(config, *extra, program="florenz-train", env={"OMP_NUM_THREADS": "1"})


# -- planted pickles -------------------------------------------------------------------------------------
class Touch:
    """Unpickling this creates `marker`: any code could run in its place."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def pickle_payload(marker: Path) -> bytes:
    """A raw pickle that creates `marker` when loaded (checked on a probe marker first)."""
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(Touch(probe)))
    assert probe.exists(), "the payload must be live for the test to mean anything"
    probe.unlink()
    return pickle.dumps(Touch(marker))


def torch_payload(path: Path, marker: Path) -> None:
    """The old format's file, torch.save's zip, whose torch.load(weights_only=False) creates `marker`."""
    probe = marker.with_name(marker.name + ".probe")
    torch.save(Touch(probe), path)
    torch.load(path, weights_only=False)
    assert probe.exists(), "the payload must be live for the test to mean anything"
    probe.unlink()
    torch.save(Touch(marker), path)


def assert_checkpoint_error(result: CliResult, outcome: str, file: Path) -> None:
    expect(result, outcome, "code execution", mentions=["checkpoint error: ", str(file)])
    assert len([l for l in result.stderr.splitlines() if "checkpoint error" in l]) == 1, result.stderr


def test_an_old_format_pickle_checkpoint_is_refused_not_unpickled(run, tmp_path):
    config, checkpoints = run
    folder, marker = checkpoints / CHECKPOINT, tmp_path / "pwned"
    (folder / STATE_JSON).unlink()
    (folder / STATE_TENSORS).unlink()
    torch_payload(folder / OLD_PICKLE, marker)
    result = train(config)
    assert not marker.exists(), "the planted pickle ran"
    assert_checkpoint_error(result, "clear_error", folder / STATE_JSON)
    assert OLD_PICKLE in result.stderr


def test_a_pickle_beside_a_valid_checkpoint_is_ignored_and_the_run_resumes(run, tmp_path):
    config, checkpoints = run
    marker = tmp_path / "pwned"
    torch_payload(checkpoints / CHECKPOINT / OLD_PICKLE, marker)
    result = train(config)
    assert not marker.exists(), "the planted pickle ran"
    expect(result, "handled", "code execution")
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 4
    assert (checkpoints / "latest").read_text() == "step-00000004"


@pytest.mark.parametrize("name", [STATE_TENSORS, STATE_JSON, "model/model.safetensors"])
def test_a_pickle_under_the_new_format_names_is_refused_not_unpickled(run, tmp_path, name):
    config, checkpoints = run
    file, marker = checkpoints / CHECKPOINT / name, tmp_path / "pwned"
    file.write_bytes(pickle_payload(marker))
    result = train(config)
    assert not marker.exists(), "the planted pickle ran"
    assert_checkpoint_error(result, "clear_error", file)


# -- the `latest` pointer ----------------------------------------------------------------------------------
def elsewhere(tmp_path: Path, checkpoints: Path) -> Path:
    """A valid checkpoint outside the run folder, at tmp/other-run/step-00000002."""
    target = tmp_path / "other-run" / CHECKPOINT
    shutil.copytree(checkpoints / CHECKPOINT, target)
    return target


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "not a checkpoint"])
def test_a_latest_pointer_leading_out_of_the_run_folder_is_refused(run, tmp_path, kind):
    config, checkpoints = run
    target = elsewhere(tmp_path, checkpoints)
    shutil.rmtree(checkpoints / CHECKPOINT)  # only the target is left to resume from
    pointer = checkpoints / "latest"
    if kind == "absolute":
        pointer.write_text(str(target))
    elif kind == "dotdot":
        pointer.write_text(os.path.relpath(target, checkpoints))
        assert (checkpoints / pointer.read_text()).resolve() == target.resolve()
    elif kind == "symlink":
        (checkpoints / "step-00000009").symlink_to(target, target_is_directory=True)
        pointer.write_text("step-00000009")
    else:
        shutil.copytree(target, checkpoints / "model-copy")
        pointer.write_text("model-copy")
    result = train(config)
    assert_checkpoint_error(result, "refused", pointer)
    assert not (checkpoints / "step-00000004").exists()


# -- truncated and malformed state ----------------------------------------------------------------------
def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def drop_step(file: Path) -> None:
    state = json.loads(file.read_text())
    del state["step"]
    file.write_text(json.dumps(state))


def drop_a_tensor_reference(file: Path) -> None:
    file.write_text(file.read_text().replace('{"__tensor__": "0"}', '{"__tensor__": "no-such-tensor"}', 1))


@pytest.mark.parametrize("name,damage", [(STATE_TENSORS, truncate), (STATE_JSON, truncate),
                                         ("model/model.safetensors", truncate), (STATE_JSON, drop_step),
                                         (STATE_JSON, drop_a_tensor_reference), (STATE_TENSORS, Path.unlink)],
                         ids=["truncated tensors", "truncated json", "truncated weights", "json without step",
                              "json naming a missing tensor", "tensors missing"])
def test_a_damaged_checkpoint_fails_naming_the_file(run, name, damage):
    config, checkpoints = run
    file = checkpoints / CHECKPOINT / name
    before = file.read_bytes()
    damage(file)
    assert not file.exists() or file.read_bytes() != before
    assert_checkpoint_error(train(config), "clear_error", file)


def test_a_checkpoint_of_another_model_fails_naming_its_weights(run, tmp_path, paper):
    _, checkpoints = run
    other = train_config(tmp_path, *paper, **STEPS, **{"model.size": "tiny-gemma"})
    result = train(other)
    expect(result, "clear_error", "failures without their cause",
           mentions=["checkpoint error: ", str(checkpoints / CHECKPOINT / "model" / "model.safetensors"),
                     "does not fit this model"])


# -- image decoding ------------------------------------------------------------------------------------------
def coco_jpeg() -> Image.Image:
    require_coco_sample()
    path = sorted((COCO_SAMPLE / "images").glob("*.jpg"))[0]
    image = Image.open(path).convert("RGB")
    assert image.width != image.height  # a turn must show in the shape
    return image


def decode(data: bytes, ext: str) -> Image.Image:
    from model.data import decode_image

    return decode_image({"__key__": "case", ext: data})


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation,turn", [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_a_jpeg_with_exif_orientation_is_decoded_upright(orientation, turn):
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    data = encoded(coco_jpeg(), "JPEG", quality=95, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    decoded = decode(data, "jpg")
    assert decoded.size == (stored.height, stored.width)
    assert np.array_equal(np.asarray(decoded), np.asarray(stored.transpose(turn)))


def test_a_16_bit_grey_png_keeps_its_grey_levels():
    gradient = np.linspace(0, 65535, 1024).astype(np.uint16)[None].repeat(8, axis=0)
    decoded = np.asarray(decode(encoded(Image.fromarray(gradient), "PNG"), "png"))
    assert decoded.shape == (8, 1024, 3) and decoded.dtype == np.uint8
    assert len(np.unique(decoded)) >= 250  # Pillow's own convert("RGB") clips to 5 here
    assert np.array_equal(decoded[..., 0], gradient >> 8)
    assert np.array_equal(decoded[..., 0], decoded[..., 2])


def test_a_32_bit_int_grey_image_is_read_as_16_bit():
    from transforms.image_pixels import to_rgb

    values = np.array([[-5, 0, 255, 256, 32768, 65535, 70000]], dtype=np.int32)
    decoded = np.asarray(to_rgb(Image.fromarray(values)))[..., 0]
    assert decoded.tolist() == [[0, 0, 0, 1, 128, 255, 255]]


def transparent_cases() -> dict[str, Image.Image]:
    """Left half transparent black, right half opaque red, in the modes that carry transparency."""
    rgba = np.zeros((4, 8, 4), dtype=np.uint8)
    rgba[:, 4:] = (200, 0, 0, 255)
    palette = Image.fromarray(rgba[..., :3]).quantize(colors=4)
    palette.info["transparency"] = palette.getpixel((0, 0))
    grey_alpha = Image.fromarray(rgba).convert("LA")
    return {"RGBA": Image.fromarray(rgba), "P": palette, "LA": grey_alpha}


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_transparency_is_composited_on_white(mode):
    image = transparent_cases()[mode]
    data = encoded(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    decoded = np.asarray(decode(data, "png"))
    assert decoded.shape == (4, 8, 3)
    assert (decoded[:, :4] == 255).all()  # transparent: white, not the stored black
    opaque = (200, 0, 0) if mode != "LA" else (60, 60, 60)  # LA: red's luma
    assert (np.abs(decoded[:, 4:].astype(int) - opaque) <= 1).all(), decoded[0, 4:]

