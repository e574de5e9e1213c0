"""The toy world (issue 18): grammar captions that are exact translations of each other and read back to
the scene, deterministic rendering whose geometry matches the caption, and inputs the real pipeline
builds from (toy-world -> import-translations -> build -> verify)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import REPO
from transforms.toy_grammar import LANGUAGES, attribute_accuracy, caption, read_attributes
from transforms.toy_scenes import (COLOURS, Scene, Thing, every_scene, render, sample_scene, scene_key,
                                   scene_of_key)

CLI = str(Path(sys.executable).with_name("florenz-data"))


def test_agreement_case_and_word_order_follow_each_language():
    star, diamond = Thing("star", "white", "large"), Thing("diamond", "purple", "small")
    scene = Scene(star, second=diamond, relation="left_of")
    assert [caption(scene, lang) for lang in LANGUAGES] == [
        "A large white star to the left of a small purple diamond.",
        "Ein großer weißer Stern links von einer kleinen violetten Raute.",  # dative after von, Raute feminine
        "Une grande étoile blanche à gauche d'un petit losange violet.",  # étoile feminine, colour after noun
        "Una estrella blanca grande a la izquierda de un rombo morado pequeño.",
        "Большая белая звезда слева от маленького фиолетового ромба.",  # genitive after от
        "一个大的白色星形在一个小的紫色菱形的左边。",  # no spaces
    ]
    below = Scene(Thing("square", "blue", "small"), second=Thing("cross", "orange", "large"), relation="below")
    assert caption(below, "ru") == "Маленький синий квадрат под большим оранжевым крестом."  # instrumental after под
    assert caption(below, "de") == "Ein kleines blaues Quadrat unter einem großen orangefarbenen Kreuz."
    assert caption(Scene(Thing("circle", "red", "small"), position="center"), "zh") == "中间有一个小的红色圆形。"


def test_every_caption_of_the_grammar_reads_back_to_its_scene_in_every_language():
    scenes = list(every_scene())
    assert len(scenes) == len({caption(s, "en") for s in scenes}) == 36_960  # one scene per distinct caption
    for scene in scenes[::37]:
        for lang in LANGUAGES:
            assert attribute_accuracy(caption(scene, lang), lang, scene) == 1.0, (lang, caption(scene, lang))


def test_a_wrong_caption_scores_what_it_gets_right():
    scene = Scene(Thing("circle", "red", "small"), second=Thing("square", "blue", "large"), relation="above")
    wrong = Scene(Thing("circle", "green", "small"), second=Thing("square", "blue", "large"), relation="below")
    for lang in LANGUAGES:
        assert attribute_accuracy(caption(wrong, lang), lang, scene) == pytest.approx(5 / 7)  # colour and relation wrong
    assert attribute_accuracy("Ein Kreis.", "de", scene) == pytest.approx(1 / 7)  # only the first shape
    assert read_attributes("", "fr")["first"] == {"shape": None, "colour": None, "size": None}


def _centroid(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    mask = (np.abs(pixels.astype(int) - colour).sum(axis=2) < 60)
    assert mask.sum() > 5, colour
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_rendering_is_deterministic_distinct_and_drawn_where_the_caption_says():
    assert render(sample_scene(3, 7), 3, 7) == render(sample_scene(3, 7), 3, 7)
    assert len({render(sample_scene(3, i), 3, i) for i in range(50)}) == 50
    assert scene_of_key(scene_key(3, 123)) == sample_scene(3, 123)
    checked = 0
    for index in range(400):
        scene = sample_scene(5, index)
        if scene.second is None or scene.first.colour == scene.second.colour:
            continue
        pixels = np.asarray(Image.open(io.BytesIO(render(scene, 5, index, 96))).convert("RGB"))
        assert pixels.shape == (96, 96, 3)
        first, second = (_centroid(pixels, COLOURS[t.colour]) for t in (scene.first, scene.second))
        axis, sign = {"left_of": (0, -1), "right_of": (0, 1), "above": (1, -1), "below": (1, 1)}[scene.relation]
        assert sign * (first[axis] - second[axis]) > 20, (index, scene)
        checked += 1
    assert checked > 200


def test_the_toy_world_goes_through_import_and_build_with_the_held_out_captions_dropped(tmp_path):
    world = tmp_path / "world"
    subprocess.run([CLI, "toy-world", str(world), "--scenes", "300", "--rows-per-part", "120"], check=True,
                   capture_output=True, timeout=300)
    assert sorted(p.name for p in (world / "images").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    rows = pq.read_table(world / "images").to_pylist()
    assert len(rows) == 300 and rows[5]["key"] == scene_key(0, 5)
    assert rows[5]["caption"] == caption(sample_scene(0, 5), "en")
    assert json.loads(rows[5]["scene"]) == sample_scene(0, 5).attributes()

    store = tmp_path / "store"
    done = subprocess.run([CLI, "import-translations", str(world / "translations.parquet"), "--store", str(store),
                           "--languages", "de,fr,es,ru,zh", "--fingerprint", "import-toy0"],
                          check=True, capture_output=True, text=True, timeout=600)
    counts = json.loads(done.stdout)["counts"]
    assert counts["accepted"] == counts["translations_read"] == 5 * 36_960  # every translation passes the checks

    config = (REPO / "configs" / "toy-world.yaml").read_text()
    for folder, path in (("../out/toy-world/images", world / "images"), ("../out/toy-world-store", store),
                         ("../out/toy-world-shards", tmp_path / "out")):
        config = config.replace(folder, str(path))
    (tmp_path / "toy.yaml").write_text(config)
    subprocess.run([CLI, "build", str(tmp_path / "toy.yaml")], check=True, capture_output=True, timeout=600)
    subprocess.run([CLI, "verify", str(tmp_path / "out")], check=True, capture_output=True, timeout=300)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    train = stats["splits"]["train"]["annotations"]
    assert "caption-ru" not in train and "caption-zh" not in train and train["translation-zh"] > 0
    assert stats["splits"]["eval"]["annotations"]["caption-zh"] > 0  # held-out references for the eval
    with tarfile.open(sorted((tmp_path / "out" / "eval").glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        sample = json.loads(tar.extractfile(member).read())
    scene = scene_of_key(sample["source_id"])
    references = {a["lang"]: a["target"] for a in sample["annotations"] if a["task"] == "caption"}
    assert references == {lang: caption(scene, lang) for lang in LANGUAGES}  # exact, from the store


def test_the_toy_sizes_use_the_patch_stem_with_davits_output_layout(tmp_path):
    import torch

    from model.modeling import FlorenzModel
    from model.sizes import florenz_config

    images, prompt = torch.randn(2, 3, 64, 64), torch.ones(2, 5, dtype=torch.long)
    davit = FlorenzModel(florenz_config("tiny", 300, 300))
    for size in ("toy-s", "toy-m", "toy-l"):
        model = FlorenzModel(florenz_config(size, 300, 300))
        assert model.config.vision_tower == "patch_stem" and davit.config.vision_tower == "davit"
        stem = model.vision_tower(images).last_hidden_state
        assert stem.shape == (2, model.config.florence.vision_config.embed_dim[-1], 2, 2)  # (B, C, H/32, W/32)
        states, _ = model.encode(images, prompt, torch.ones_like(prompt))
        assert states.shape[1] == FlorenzModel.image_tokens(64) + 5 == davit.encode(images, prompt, torch.ones_like(prompt))[0].shape[1]
    model.save_pretrained(tmp_path / "toy")
    loaded = FlorenzModel.from_pretrained(tmp_path / "toy")
    assert loaded.config.vision_tower == "patch_stem"
    assert torch.equal(loaded.vision_tower.merge.weight, model.vision_tower.merge.weight)


def test_the_language_of_a_caption_is_read_from_the_grammars_vocabulary():
    from transforms.toy_grammar import language_of

    scene = sample_scene(2, 11)
    assert [language_of(caption(scene, lang)) for lang in LANGUAGES] == list(LANGUAGES)
    assert language_of("Das Bild zeigt etwas ganz anderes.") is None  # German, but not the world's German
    assert language_of("Ein kleiner roter Kreis links von a small square.") == "de"  # most words decide
    assert language_of("") is None


def test_the_study_runs_end_to_end_answers_a_language_only_its_data_teaches_and_uses_the_image(tmp_path):
    """The CI-sized study: 2 arms x 1 size x 1 budget x 1 seed through toy-world, import-translations,
    build + verify, florenz-sweep and the toy metrics. Asserted is what 500 steps of toy-s settle (measured:
    31 % of the Russian captions in Russian with translation data, seen grounding gaps 0.54 / 0.66): with no
    Russian data at all no caption asked in Russian comes out in Russian; with only Russian translation
    data some do; and the seen languages' captions depend on the image (loss with shuffled images higher)."""
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "toy_emergence.py"), "--out", str(out),
                           "--scenes", "1000", "--held-out", "ru", "--arms", "other_image,no_translation",
                           "--sizes", "toy-s", "--steps", "500", "--seeds", "0", "--eval-images", "16",
                           "--eval-fraction", "0.1"], capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    rows = {row["split"]: row for row in study["rows"]}
    assert set(rows) == {"other_image", "no_translation"}
    assert rows["no_translation"]["target_language_share/ru"] == 0.0
    assert rows["other_image"]["target_language_share/ru"] > 0.0
    for row in rows.values():
        assert row["grounding_gap/en"] > 0.1 and row["grounding_gap/de"] > 0.1, row
    assert rows["other_image"]["seed"] == 0 and rows["other_image"]["steps"] == 500
    for row in rows.values():  # every metric measured, per language
        for name in ("loss", "grounding_gap", "chrf", "attribute_accuracy", "content_accuracy"):
            assert all(isinstance(row[f"{name}/{lang}"], float) for lang in ("en", "de", "ru"))
    report = (out / "study.md").read_text()
    assert report.count("| toy-s | 500 |") == 2
    assert "| no_translation | not fitted: " in report  # one budget: no law to fit, said so in the fits table
    assert (out / "study.png").stat().st_size > 0
    assert set(json.loads((out / "fits.json").read_text())) == {"other_image", "no_translation"}
