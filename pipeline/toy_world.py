"""florenz-data toy-world OUT --scenes N: the toy world as inputs the real pipeline reads.

Writes, through Beam's FileSystems (local disk or a bucket):
- `OUT/images/part-NNNNN.parquet`: one row per scene (`key`, PNG `image`, English `caption`, the
  scene's attributes as JSON in `scene`), read by a `parquet` source (configs/toy-world.yaml);
- `OUT/translations.parquet`: every caption the grammar can say, in every toy language (wide format:
  `en`, `de`, `fr`, ...), for `florenz-data import-translations` to fill the translation store with
  exact translations: the store then plays the translator, and the plan decides what is used;
- `OUT/world.json`: the seed, scene count, image size and languages, so a study can tell which world
  an output was built from.

Scenes are rendered by parts on Beam workers (a part is written to a temporary name and renamed, so
a retried bundle rewrites the same bytes); the dictionary of captions is bounded by the grammar
(36,960 texts), not by the number of scenes.
"""
from __future__ import annotations

import io
import json
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.errors import ConfigError
from transforms.atomic import join, write_bytes_atomic
from transforms.toy_grammar import LANGUAGES, caption
from transforms.toy_scenes import every_scene, sample_scene, render, scene_key

IMAGES, TRANSLATIONS, WORLD = "images", "translations.parquet", "world.json"
ROWS_PER_PART = 5000
_IMAGE_SCHEMA = pa.schema([("key", pa.string()), ("image", pa.binary()), ("caption", pa.string()),
                           ("scene", pa.string())])


def _parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def write_part(part: int, out: str, seed: int, scenes: int, image_size: int, rows_per_part: int) -> int:
    """Render and write one part of the scenes; returns how many it holds."""
    rows = {name: [] for name in _IMAGE_SCHEMA.names}
    for index in range(part * rows_per_part, min((part + 1) * rows_per_part, scenes)):
        scene = sample_scene(seed, index)
        rows["key"].append(scene_key(seed, index))
        rows["image"].append(render(scene, seed, index, image_size))
        rows["caption"].append(caption(scene, "en"))
        rows["scene"].append(json.dumps(scene.attributes(), sort_keys=True))
    table = pa.Table.from_pydict(rows, schema=_IMAGE_SCHEMA)
    # the temporary name (part-NNNNN.parquet.<uuid>) never matches the source's *.parquet glob
    write_bytes_atomic(join(out, IMAGES, f"part-{part:05d}.parquet"), _parquet_bytes(table), join(out, IMAGES))
    return table.num_rows


def translations_table(languages: Sequence[str] = LANGUAGES) -> pa.Table:
    """Every caption of the grammar in every language, one row per English text."""
    scenes = list(every_scene())
    return pa.Table.from_pydict({lang: [caption(scene, lang) for scene in scenes] for lang in languages})


def write_world(out: str, scenes: int, seed: int = 0, image_size: int = 64, rows_per_part: int = ROWS_PER_PART,
                beam_args: Sequence[str] = ()) -> dict:
    """The world's files under `out`; returns what world.json holds."""
    if scenes < 1:
        raise ConfigError("--scenes", f"{scenes}: give at least one scene")
    if not 16 <= image_size <= 1024:
        raise ConfigError("--image-size", f"{image_size}: give a side between 16 and 1024 pixels")
    if rows_per_part < 1:
        raise ConfigError("--rows-per-part", f"{rows_per_part}: give at least 1")
    parts = -(-scenes // rows_per_part)
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        _ = (pipeline
             | "Parts" >> beam.Create(range(parts))
             | "Spread" >> beam.Reshuffle()
             | "Render" >> beam.Map(write_part, out, seed, scenes, image_size, rows_per_part))
    translations = translations_table()
    write_bytes_atomic(join(out, TRANSLATIONS), _parquet_bytes(translations), out)
    world = {"seed": seed, "scenes": scenes, "image_size": image_size, "languages": list(LANGUAGES),
             "parts": parts, "caption_texts": translations.num_rows}
    write_bytes_atomic(join(out, WORLD), json.dumps(world, indent=2).encode(), out)
    return world
