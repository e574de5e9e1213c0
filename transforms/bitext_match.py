"""Exact top-N bitexts per image, at any scale: blocked image x bitext cosine similarity.

Neither side is ever held whole by one worker. Each side's (id, unit vector) rows are cut into
blocks by a stable hash of the id (ceil(count / block_size) blocks, the count a one-number side
input), grouped per block (a group of ~block_size rows, measured) and staged as one .npz file per
block through Beam's FileSystems. A work item is a pair of block indices (image block, text block),
generated per staged image block with the number of text blocks as a one-number side input, and run
where it was generated: that worker reads its image block once (cached) while the text blocks stream
past it, multiplies each pair (B_i x B_t, on the GPU when there is one) and emits, per image, that text block's best bitexts. So
the image blocks are the parallelism, and every worker reads the whole text side once per image
block it holds (README, "Bitexts matched to images": the arithmetic behind the block sizes). Per
image the partial lists are merged by a lifted top-k combiner: what a key holds is k candidates,
whatever the number of text blocks feeding it.

Against hubness a bitext may serve at most `use_cap` images: per bitext the `use_cap` images with the
highest similarity keep it (a lifted top-k per bitext: a hub in millions of images' lists still holds
only use_cap of them), every other image loses it; each image then keeps its best `top_n` of what
remains, which is why `candidates` (> top_n) are searched per image. An image may end with fewer
than top_n when all its candidates went to closer images.

Order everywhere is similarity descending, then id ascending: ties are broken by id, so the result
depends neither on blocks nor on bundle order.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from schemas.bitext import BitextMatching
from transforms.atomic import join, write_bytes_atomic
from transforms.group_metrics import MeasuredCombinePerKey, MeasuredGroupByKey

Candidate = tuple[float, str]  # (similarity, id of the other side)
IMAGES, TEXTS = "image", "text"


def best_first(candidates: Iterable[Candidate], k: int) -> list[Candidate]:
    """The k best: similarity descending, ties by id ascending."""
    return sorted(candidates, key=lambda c: (-c[0], c[1]))[:k]


class TopCandidates(beam.CombineFn):
    """The k best of lists of candidates; the accumulator never holds more than k (lifted)."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self) -> list[Candidate]:
        return []

    def add_input(self, acc: list[Candidate], element: list[Candidate]) -> list[Candidate]:
        return best_first([*acc, *element], self.k)

    def merge_accumulators(self, accs: Iterable[list[Candidate]]) -> list[Candidate]:
        return best_first([c for acc in accs for c in acc], self.k)

    def extract_output(self, acc: list[Candidate]) -> list[Candidate]:
        return acc


def block_count(rows: int, block_size: int) -> int:
    return max(1, math.ceil(rows / block_size))


def block_of(row_id: str, blocks: int) -> int:
    """A stable block for an id (sha256, so the same on every worker and run)."""
    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:8], "big") % blocks


def block_path(staging: str, side: str, block: int) -> str:
    return join(staging, f"{side}-{block:06d}.npz")


def _write_block(element: tuple[int, Iterable[tuple[str, np.ndarray]]], staging: str, side: str) -> int:
    """One block as .npz (ids sorted, so a retried bundle writes the same bytes), written atomically.
    An id read twice (the same bitext in two files) hashes to one block and is kept once there: the
    copy with the largest vector bytes, so the choice does not depend on the order rows arrive in
    (two embeddings of one text in different batches may differ in the last bits)."""
    block, rows = element
    rows = sorted({row_id: vector for row_id, vector in sorted(rows, key=lambda r: (r[0], r[1].tobytes()))}.items())
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array([r[0] for r in rows]), vectors=np.stack([r[1] for r in rows]).astype(np.float32))
    write_bytes_atomic(block_path(staging, side, block), buffer.getvalue(), staging)
    return block


@functools.lru_cache(maxsize=4)
def read_block(path: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of a staged block; None for a block no id hashed to."""
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return data["ids"], data["vectors"]


class StageBlocks(beam.PTransform):
    """(id, unit vector) rows -> staged block files; returns the PCollection of the blocks' indices
    and a singleton PCollection of the number of blocks."""

    def __init__(self, staging: str, side: str, block_size: int):
        super().__init__()
        self.staging, self.side, self.block_size = staging, side, block_size

    def expand(self, rows):
        blocks = (rows | "Count" >> beam.combiners.Count.Globally()
                  | "Blocks" >> beam.Map(block_count, self.block_size))
        written = (rows
                   | "KeyByBlock" >> beam.Map(lambda r, n: (block_of(r[0], n), r), beam.pvalue.AsSingleton(blocks))
                   | "GroupBlocks" >> MeasuredGroupByKey(name=f"BitextMatch:{self.side}Block")
                   | "WriteBlocks" >> beam.Map(_write_block, self.staging, self.side))
        # The number of blocks, available only once every block is written: work items read them.
        staged = (written | "Written" >> beam.combiners.Count.Globally()
                  | "After" >> beam.Map(lambda _, n: n, beam.pvalue.AsSingleton(blocks)))
        return written, staged


class ScoreBlockPair(beam.DoFn):
    """(image block, text block) -> (image id, its best `candidates` of this text block), per image."""

    def __init__(self, staging: str, candidates: int):
        self.staging, self.candidates = staging, candidates

    def process(self, pair: tuple[int, int]) -> Iterator[tuple[str, list[Candidate]]]:
        images = read_block(block_path(self.staging, IMAGES, pair[0]))
        texts = read_block(block_path(self.staging, TEXTS, pair[1]))
        if images is None or texts is None:
            return
        yield from block_top(images, texts, self.candidates)


def block_top(images: tuple[np.ndarray, np.ndarray], texts: tuple[np.ndarray, np.ndarray],
              k: int) -> Iterator[tuple[str, list[Candidate]]]:
    """Per image, its k best texts of one block."""
    image_ids, text_ids = images[0], texts[0]
    rows, cols, sims = _reaching(images[1], texts[1], k)
    starts = np.searchsorted(rows, np.arange(len(image_ids) + 1))
    for i, image_id in enumerate(image_ids):
        span = slice(starts[i], starts[i + 1])
        yield str(image_id), best_first(zip(sims[span].tolist(), text_ids[cols[span]].tolist()), k)


def _reaching(image_vectors: np.ndarray, text_vectors: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """(rows, cols, similarities), row-major, of every pair at or above its image's k-th similarity in
    the block. Every pair tying the k-th is kept, so the final order by id does not depend on which
    tie top-k picked. The product and the selection run on the GPU when the worker has one (fp32:
    TF32 stays off, torch's default for matmul); only the selected pairs come back."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sims = torch.from_numpy(image_vectors).to(device) @ torch.from_numpy(text_vectors).to(device).T
    kth = torch.topk(sims, min(k, sims.shape[1]), dim=1).values[:, -1:]
    rows, cols = torch.nonzero(sims >= kth, as_tuple=True)
    return rows.cpu().numpy(), cols.cpu().numpy(), sims[rows, cols].cpu().numpy()


def _work_items(image_block: int, text_blocks: int) -> Iterator[tuple[int, int]]:
    for text_block in range(text_blocks):
        yield image_block, text_block


def _by_bitext(element: tuple[str, list[Candidate]]) -> Iterator[tuple[str, list[Candidate]]]:
    image_id, candidates = element
    for sim, bitext_id in candidates:
        yield bitext_id, [(sim, image_id)]


def _by_image(element: tuple[str, list[Candidate]]) -> Iterator[tuple[str, list[Candidate]]]:
    bitext_id, users = element
    for sim, image_id in users:
        yield image_id, [(sim, bitext_id)]


class MatchBitexts(beam.PTransform):
    """(images: (image id, vector), texts: (bitext id, vector)) -> (image id, [(similarity, bitext
    id), ...] best first, at most top_n). Vectors are normalised here. `staging` holds the blocks: a
    folder of this run's own (a worker caches blocks by path)."""

    def __init__(self, settings: BitextMatching, staging: str):
        super().__init__()
        self.settings, self.staging = settings, staging

    def expand(self, inputs):
        s = self.settings
        images, texts = (inputs[side] | f"Normalise[{side}]" >> beam.Map(_unit) for side in (IMAGES, TEXTS))
        image_blocks, _ = images | "StageImages" >> StageBlocks(self.staging, IMAGES, s.image_block)
        _, text_blocks = texts | "StageTexts" >> StageBlocks(self.staging, TEXTS, s.text_block)
        per_image = s.searched
        candidates = (image_blocks
                      # Not reshuffled: an image block's items run in order where it was read, so
                      # the block is read once and the text blocks stream past it.
                      | "WorkItems" >> beam.FlatMap(_work_items, beam.pvalue.AsSingleton(text_blocks))
                      | "Score" >> beam.ParDo(ScoreBlockPair(self.staging, per_image))
                      | "TopPerImage" >> MeasuredCombinePerKey(TopCandidates(per_image), "BitextMatch:TopPerImage"))
        if s.use_cap is None:
            return candidates
        return (candidates
                | "ByBitext" >> beam.FlatMap(_by_bitext)
                | "CapPerBitext" >> MeasuredCombinePerKey(TopCandidates(s.use_cap), "BitextMatch:CapPerBitext")
                | "ByImage" >> beam.FlatMap(_by_image)
                | "KeepPerImage" >> MeasuredCombinePerKey(TopCandidates(s.top_n), "BitextMatch:KeepPerImage"))


def _unit(row: tuple[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """Unit length, so a dot product is the cosine; a vector without a direction is an error naming it."""
    vector = np.asarray(row[1], dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{row[0]}: its embedding has norm {norm}; cosine similarity is undefined")
    return row[0], vector / norm
