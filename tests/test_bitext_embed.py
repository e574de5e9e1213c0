"""Bitexts matched to real images end to end: Multi30K en-de pairs read from TSV files (each pair in
two of them) and a Parquet bitext source (short English sides and broken lines counted as rejections), the real COCO sample
images and the English sides embedded by a tiny random CLIP through Beam's RunInference, matched by
the blocked matcher; the result is a numpy brute force's top-N over the same model's vectors."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.bitext import Bitext, BitextMatching, BitextSource
from schemas.contract import validate_config
from schemas.errors import InputError
from tests.clip_support import tiny_clip, unit_vectors
from tests.helpers import COCO_SAMPLE, multi30k_pairs, require_coco_sample
from transforms.bitext_match import IMAGES, TEXTS, MatchBitexts, best_first
from transforms.bitext_source import TOO_SHORT, ReadBitexts, tsv_bitexts
from transforms.embeddings import Embed
from transforms.source_common import MALFORMED

PAIRS = 2000
MATCHING = BitextMatching(top_n=3, image_block=32, text_block=512)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, the pairs with every English side as Multi30K has it, short ones included)."""
    require_coco_sample()
    root = tmp_path_factory.mktemp("bitext")
    pairs = multi30k_pairs("train", "de", PAIRS, min_chars=0)
    lines = ["en\tde", *(f"{en}\t{de}" for en, de in pairs), "a line with no tab at all, so one field"]
    for name in ("pairs.tsv", "pairs-again.tsv"):  # every bitext twice: kept once
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"english": [en for en, _ in pairs] + [None], "german": [de for _, de in pairs] + ["x"]}),
                   root / "pairs.parquet", row_group_size=700)
    tiny_clip(root / "clip", [en for en, _ in pairs])
    return root, pairs


def _spec(root: Path, fmt: str) -> BitextSource:
    if fmt == "tsv":
        return validate_config(BitextSource, {"files": str(root / "*.tsv"), "format": "tsv", "columns": {"de": "de"}})
    return validate_config(BitextSource, {"files": str(root / "*.parquet"), "en_column": "english",
                                          "columns": {"de": "german"}})


def _run(root: Path, fmt: str, out: Path) -> tuple[dict, Counter, dict]:
    """The match pipeline: (matches, rejection reasons, bitexts by id)."""
    images = sorted((COCO_SAMPLE / "images").glob("*.jpg"))
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        read = p | "Bitexts" >> ReadBitexts(_spec(root, fmt))
        english = read["bitexts"] | beam.Map(lambda b: (b.id, b.en)) | "EmbedTexts" >> Embed(str(root / "clip"), "text", 64)
        pixels = (p | beam.Create([str(i) for i in images])
                  | beam.Map(lambda path: (Path(path).stem, Path(path).read_bytes()))
                  | "EmbedImages" >> Embed(str(root / "clip"), "image", 16))
        ({IMAGES: pixels, TEXTS: english} | MatchBitexts(MATCHING, str(out / "staging"))
         | "Matches" >> beam.MapTuple(lambda k, c: json.dumps([k, c])) | "WriteMatches" >> beam.io.WriteToText(str(out / "m")))
        read["rejected"] | beam.Map(lambda r: r.reason) | "WriteRejects" >> beam.io.WriteToText(str(out / "r"))
        read["bitexts"] | beam.Map(lambda b: json.dumps([b.id, b.en, b.translations])) | beam.io.WriteToText(str(out / "b"))

    def lines(prefix: str) -> list[str]:
        return [line for f in sorted(out.glob(f"{prefix}-*")) for line in f.read_text().splitlines()]
    matches = {k: [tuple(c) for c in cands] for k, cands in map(json.loads, lines("m"))}
    bitexts = {i: Bitext(i, en, tuple(map(tuple, tr))) for i, en, tr in map(json.loads, lines("b"))}
    return matches, Counter(lines("r")), bitexts


def _reference(root: Path, images: list[Path], bitexts: dict[str, Bitext]) -> dict:
    """The same model's vectors made outside Beam, all at once, and every pair scored in numpy."""
    ids = sorted(bitexts)
    sims = (unit_vectors(root / "clip", "image", [i.read_bytes() for i in images])
            @ unit_vectors(root / "clip", "text", [bitexts[i].en for i in ids]).T)
    return {image.stem: best_first(zip(row.tolist(), ids), MATCHING.top_n) for image, row in zip(images, sims)}


@pytest.mark.parametrize("fmt", ["tsv", "parquet"])
def test_real_images_get_the_brute_force_top_n_of_real_sentences(corpus, tmp_path, fmt):
    root, pairs = corpus
    matches, rejected, bitexts = _run(root, fmt, tmp_path)
    short, files = sum(1 for en, _ in pairs if len(en.strip()) < 26), 2 if fmt == "tsv" else 1
    assert 0 < short < PAIRS and rejected == Counter({TOO_SHORT: short * files, MALFORMED: files})
    assert len(bitexts) == len({(en.strip(), de.strip()) for en, de in pairs if len(en.strip()) >= 26})
    assert all(b.translations[0][0] == "de" and len(b.en) >= 26 for b in bitexts.values())
    images = sorted((COCO_SAMPLE / "images").glob("*.jpg"))
    reference = _reference(root, images, bitexts)
    assert set(matches) == set(reference) and len(matches) == len(images)
    for key, cands in matches.items():
        assert [b for _, b in cands] == [b for _, b in reference[key]], key
        assert np.allclose([s for s, _ in cands], [s for s, _ in reference[key]], atol=1e-5), key


def test_a_bitext_id_is_its_content(corpus):
    root, _ = corpus
    spec = _spec(root, "tsv")
    first = [b for b in tsv_bitexts(spec, str(root / "pairs.tsv")) if isinstance(b, Bitext)]
    again = [b for b in tsv_bitexts(spec, str(root / "pairs.tsv")) if isinstance(b, Bitext)]
    assert [b.id for b in first] == [b.id for b in again]
    assert Bitext.of(first[0].en, (("de", "anders"),)).id != first[0].id


def test_a_missing_column_names_the_file_and_the_setting(corpus, tmp_path):
    root, _ = corpus
    spec = validate_config(BitextSource, {"files": str(root / "*.tsv"), "format": "tsv", "columns": {"fr": "fr"}})
    with pytest.raises(InputError, match=r"pairs\.tsv: bitext source columns\.fr: column 'fr' is not in the header"):
        list(tsv_bitexts(spec, str(root / "pairs.tsv")))


@pytest.mark.parametrize("content, message", [
    (b"", "bitext source: the file is empty; a header row names its columns"),
    (b"en\tde\nA man in a blue shirt rides a bike\t\xff\xfe\n", "bitext source: not UTF-8")])
def test_an_unreadable_tsv_names_the_file(tmp_path, content, message):
    (tmp_path / "bad.tsv").write_bytes(content)
    spec = validate_config(BitextSource, {"files": str(tmp_path / "*.tsv"), "format": "tsv", "columns": {"de": "de"}})
    with pytest.raises(InputError, match=r"bad\.tsv: " + message):
        list(tsv_bitexts(spec, str(tmp_path / "bad.tsv")))
