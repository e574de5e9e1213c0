"""Bitexts matched to images (transforms/bitext_match.py): the blocked Beam matcher gives exactly a
numpy brute force's top-N at 5,000 images x 50,000 sentences, its groups stay at the block sizes as
the input grows, and the use cap against hubness follows its rule. Vectors here are random unit
vectors fed in directly (what the matcher does not depend on); tests/test_bitext_embed.py embeds
real images and sentences with a tiny CLIP through RunInference."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from benchmarks.bitext_match import (Side, block_problems, brute_force, capped, run_matcher, same_matches)
from schemas.bitext import BitextMatching
from schemas.errors import ConfigError

DIM = 32
SETTINGS = BitextMatching(top_n=5, image_block=512, text_block=4096)


@pytest.fixture(scope="module")
def small_and_large(tmp_path_factory):
    root = tmp_path_factory.mktemp("match")
    return {n: run_matcher(Side(n, DIM, 1), Side(10 * n, DIM, 2), SETTINGS, root / str(n)) for n in (500, 5000)}


def test_top_n_equals_a_numpy_brute_force_at_5000_images_by_50000_sentences(small_and_large):
    run = small_and_large[5000]
    reference, _ = brute_force(Side(5000, DIM, 1), Side(50_000, DIM, 2), SETTINGS.top_n)
    assert len(run.matches) == 5000 and all(len(c) == SETTINGS.top_n for c in run.matches.values())
    assert same_matches(run.matches, reference) == []
    # 13 text blocks fed every image's lifted top-N combiner: the exact answer came from many blocks.
    assert run.maxima["BitextMatch:TopPerImage"] == 13


def test_the_largest_group_stays_at_the_block_sizes_as_the_input_grows(small_and_large):
    small, large = small_and_large[500].maxima, small_and_large[5000].maxima
    assert block_problems(small, SETTINGS) == [] and block_problems(large, SETTINGS) == [], (small, large)
    for name in ("BitextMatch:imageBlock", "BitextMatch:textBlock"):
        assert large[name] <= 1.25 * max(small[name], getattr(SETTINGS, name.split(":")[1].replace("Block", "_block")))


def test_a_block_larger_than_the_input_is_caught(tmp_path):
    """The bound check fails on blocks that grow: one block holding every image."""
    one_block = BitextMatching(top_n=2, image_block=10**6, text_block=4096)
    run = run_matcher(Side(3000, DIM, 1), Side(3000, DIM, 2), one_block, tmp_path)
    assert run.maxima["BitextMatch:imageBlock"] == 3000
    assert block_problems(run.maxima, BitextMatching(top_n=2, image_block=1024, text_block=4096)) == [
        "BitextMatch:imageBlock: largest group 3,000 > 1,280"]


def test_the_use_cap_keeps_each_bitext_for_its_closest_images(tmp_path):
    """Few bitexts for many images: every bitext is in ~40 images' candidates, and may serve 3."""
    images, texts = Side(2000, 8, 3), Side(500, 8, 4)
    settings = BitextMatching(top_n=5, candidates=10, use_cap=3, image_block=256, text_block=128)
    run = run_matcher(images, texts, settings, tmp_path)
    candidates, _ = brute_force(images, texts, settings.searched)
    assert same_matches(run.matches, capped(candidates, settings.use_cap, settings.top_n)) == []
    uses = Counter(bitext for cands in run.matches.values() for _, bitext in cands)
    assert max(uses.values()) == settings.use_cap and len(uses) > 400
    assert max(map(len, run.matches.values())) == settings.top_n
    assert sum(map(len, run.matches.values())) <= settings.use_cap * texts.rows < images.rows * settings.top_n
    assert run.maxima["BitextMatch:KeepPerImage"] <= settings.searched


@pytest.mark.parametrize("bad, message", [
    ({"top_n": 0}, "bitext.matching.top_n: must be a positive integer"),
    ({"use_cap": 0}, "bitext.matching.use_cap: must be a positive integer"),
    ({"text_block": 0}, "bitext.matching.text_block: must be an integer in [1, 1048576]"),
    ({"image_block": 2**21}, "bitext.matching.image_block: must be an integer in [1, 1048576]"),
    ({"top_n": 5, "use_cap": 2, "candidates": 4}, "bitext.matching.candidates: is 4, fewer than top_n (5)"),
    ({"candidates": 8}, "bitext.matching.candidates: is only used with use_cap")])
def test_settings_that_cannot_match_are_refused_naming_the_field(bad, message):
    from schemas.contract import validate_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(BitextMatching, bad, "bitext.matching")


def _run_config(tmp_path, bitext: dict):
    from schemas.config import load_config
    from tests.helpers import coco_source, write_config

    return load_config(str(write_config(tmp_path, [coco_source(root=tmp_path)], bitext=bitext)))


def test_the_bitext_section_resolves_its_paths_against_the_config(tmp_path):
    config = _run_config(tmp_path, {"source": {"files": "ccmatrix/*.tsv", "format": "tsv", "columns": {"fr": "fr"}},
                                    "model": "clip", "matching": {"top_n": 2, "use_cap": 100}})
    assert config.bitext.source.files == str(tmp_path / "ccmatrix" / "*.tsv")
    assert config.bitext.model == str(tmp_path / "clip") and config.bitext.matching.searched == 4
    assert config.to_dict()["bitext"]["source"]["columns"] == {"fr": "fr"}


@pytest.mark.parametrize("source, message", [
    ({"files": "x.tsv", "columns": {}}, "bitext.source.columns: must be a mapping from target language"),
    ({"files": "x.tsv", "columns": {"xx": "xx"}}, "bitext.source.columns: must be a mapping from target "
                                                  "language to its column, e.g. {de: de}, got {'xx': 'xx'}"),
    ({"files": "x.tsv", "columns": {"fr": "fr"}, "format": "csv"}, "bitext.source.format: must be 'parquet' or 'tsv'"),
    ({"columns": {"fr": "fr"}}, "bitext.source.files: is required")])
def test_a_bitext_source_that_cannot_be_read_is_refused_naming_the_field(tmp_path, source, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _run_config(tmp_path, {"source": source, "model": "clip"})


def test_ties_are_broken_by_bitext_id_across_blocks(tmp_path):
    """Every bitext equally close to every image: each image's top-N is the N smallest ids, whatever
    block each id hashed to."""
    import json

    import apache_beam as beam
    import numpy as np

    from transforms.bitext_match import IMAGES, TEXTS, MatchBitexts

    vector = np.ones(DIM, dtype=np.float32)
    texts = [(f"bt{i:04d}", vector) for i in reversed(range(300))]
    images = [(f"img{i}", vector * (i + 1)) for i in range(20)]
    settings = BitextMatching(top_n=4, image_block=8, text_block=40)
    with beam.Pipeline() as p:
        ({IMAGES: p | "Images" >> beam.Create(images), TEXTS: p | "Texts" >> beam.Create(texts)}
         | MatchBitexts(settings, str(tmp_path / "staging"))
         | beam.MapTuple(lambda k, c: json.dumps([k, [b for _, b in c]])) | beam.io.WriteToText(str(tmp_path / "m")))
    lines = [json.loads(line) for f in tmp_path.glob("m-*") for line in f.read_text().splitlines()]
    assert len(lines) == 20 and all(ids == ["bt0000", "bt0001", "bt0002", "bt0003"] for _, ids in lines)
    assert len(list((tmp_path / "staging").glob("text-*.npz"))) > 5
