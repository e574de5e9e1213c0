"""Benchmark: image x bitext pairs scored per second by the blocked exact matcher (transforms/
bitext_match.py, a real Beam pipeline on the DirectRunner) against a numpy brute force over the same
unit vectors in the same run, and whether both give the same top-N.

    .venv/bin/python benchmarks/bitext_match.py [--sizes 5000x50000,10000x100000] [--dim 512] [--out FILE]

The vectors are random (seeded) and unit length: the matcher's cost is the matmul and the top-k, not
where the vectors came from (a CLIP tower's cost is measured apart: DESIGN.md, "Embeddings").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.bitext import BitextMatching  # noqa: E402  (after the path: run as a script)
from transforms.bitext_match import IMAGES, TEXTS, Candidate  # noqa: E402

CHUNK = 2000  # rows generated per element of the pipeline's input


def image_id(i: int) -> str:
    return f"img{i:08d}"


def bitext_id(i: int) -> str:
    return f"bt{i:09d}"


def random_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    """Seeded unit vectors, generated per CHUNK rows so a pipeline element and the brute force make
    the same ones."""
    chunks = [np.random.default_rng([seed, c]).standard_normal((min(CHUNK, rows - c * CHUNK), dim))
              for c in range((rows + CHUNK - 1) // CHUNK)]
    vectors = np.concatenate(chunks).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _chunk_rows(chunk: int, rows: int, dim: int, seed: int, name) -> Iterator[tuple[str, np.ndarray]]:
    count = min(CHUNK, rows - chunk * CHUNK)
    vectors = np.random.default_rng([seed, chunk]).standard_normal((count, dim)).astype(np.float32)
    for i, vector in enumerate(vectors):
        yield name(chunk * CHUNK + i), vector


@dataclasses.dataclass(frozen=True)
class Side:
    rows: int
    dim: int
    seed: int

    def pcollection(self, p, label: str, name):
        import apache_beam as beam

        return (p | f"Chunks[{label}]" >> beam.Create(range((self.rows + CHUNK - 1) // CHUNK))
                | f"Rows[{label}]" >> beam.FlatMap(_chunk_rows, self.rows, self.dim, self.seed, name))


@dataclasses.dataclass(frozen=True)
class Run:
    matches: dict[str, list[Candidate]]
    maxima: dict[str, int]
    seconds: float


def run_matcher(images: Side, texts: Side, settings: BitextMatching, workdir: Path) -> Run:
    """The blocked matcher as a Beam pipeline; its matches and the largest group of each grouping."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.bitext_match import MatchBitexts
    from transforms.group_metrics import group_maxima

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "matches"
    start = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    inputs = {IMAGES: images.pcollection(p, IMAGES, image_id), TEXTS: texts.pcollection(p, TEXTS, bitext_id)}
    (inputs | MatchBitexts(settings, str(workdir / "staging"))
     | beam.MapTuple(lambda key, cands: json.dumps([key, cands]))
     | beam.io.WriteToText(str(out)))
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    matches = {}
    for path in sorted(workdir.glob("matches*")):
        for line in path.read_text().splitlines():
            key, cands = json.loads(line)
            matches[key] = [(float(s), t) for s, t in cands]
    return Run(matches, group_maxima(result), seconds)


def brute_force(images: Side, texts: Side, k: int, rows_at_once: int = 500) -> tuple[dict[str, list[Candidate]], float]:
    """Every image against every bitext with numpy, no blocks (image rows a few hundred at a time, only
    to bound memory): per image the k-th similarity, then what reaches it sorted by similarity
    descending, id ascending."""
    image_vectors, text_vectors = (random_vectors(s.rows, s.dim, s.seed) for s in (images, texts))
    text_ids = np.array([bitext_id(i) for i in range(texts.rows)])
    start = time.perf_counter()
    matches = {}
    for first in range(0, images.rows, rows_at_once):
        sims = image_vectors[first:first + rows_at_once] @ text_vectors.T
        kth = np.partition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k]
        for offset, row in enumerate(sims):
            reach = np.flatnonzero(row >= kth[offset])
            order = reach[np.lexsort((text_ids[reach], -row[reach]))][:k]
            matches[image_id(first + offset)] = [(float(row[j]), str(text_ids[j])) for j in order]
    return matches, time.perf_counter() - start


def capped(candidates: dict[str, list[Candidate]], use_cap: int, top_n: int) -> dict[str, list[Candidate]]:
    """The use-cap rule on plain dicts: per bitext the use_cap closest images (ties by image id) keep
    it, then each image its top_n of what it kept."""
    users: dict[str, list[tuple[float, str]]] = {}
    for image, cands in candidates.items():
        for sim, bitext in cands:
            users.setdefault(bitext, []).append((sim, image))
    kept: dict[str, list[Candidate]] = {}
    for bitext, images in users.items():
        for sim, image in sorted(images, key=lambda u: (-u[0], u[1]))[:use_cap]:
            kept.setdefault(image, []).append((sim, bitext))
    return {image: sorted(cands, key=lambda c: (-c[0], c[1]))[:top_n] for image, cands in kept.items()}


def block_problems(maxima: dict[str, int], settings: BitextMatching, slack: float = 1.25) -> list[str]:
    """Groupings over their bound: a block holds about its configured size (ids hash to blocks, so
    a little more), an image's kept list at most the bitexts searched per image."""
    bounds = {f"BitextMatch:{IMAGES}Block": settings.image_block * slack,
              f"BitextMatch:{TEXTS}Block": settings.text_block * slack,
              "BitextMatch:KeepPerImage": settings.searched}
    return [f"{name}: largest group {maxima[name]:,} > {bound:,.0f}"
            for name, bound in bounds.items() if maxima.get(name, 0) > bound]


def same_matches(a: dict[str, list[Candidate]], b: dict[str, list[Candidate]], tolerance: float = 1e-5) -> list[str]:
    """Images whose matched ids differ, or whose similarities differ by more than `tolerance`."""
    differ = sorted(set(a) ^ set(b))
    for key in set(a) & set(b):
        if [t for _, t in a[key]] != [t for _, t in b[key]] or any(
                abs(x - y) > tolerance for (x, _), (y, _) in zip(a[key], b[key])):
            differ.append(key)
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000x50000,10000x100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top-n", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bitext_match.txt"))
    args = parser.parse_args()
    settings = BitextMatching(top_n=args.top_n)
    lines = [f"bitext matching, dim {args.dim}, top {args.top_n}, blocks {settings.image_block} images x "
             f"{settings.text_block} bitexts, DirectRunner, {time.strftime('%Y-%m-%d')}",
             f"{'images x bitexts':>20} {'pairs':>14} {'matcher s':>10} {'pairs/s':>12} "
             f"{'numpy s':>8} {'pairs/s':>12} {'equal':>6} {'largest block':>14}"]
    for size in args.sizes.split(","):
        n_images, n_texts = (int(x) for x in size.split("x"))
        images, texts = Side(n_images, args.dim, 1), Side(n_texts, args.dim, 2)
        with tempfile.TemporaryDirectory() as tmp:
            run = run_matcher(images, texts, settings, Path(tmp))
        reference, numpy_s = brute_force(images, texts, args.top_n)
        pairs = n_images * n_texts
        block = max(v for k, v in run.maxima.items() if k.endswith("Block"))
        lines.append(f"{size:>20} {pairs:>14,} {run.seconds:>10.1f} {pairs / run.seconds:>12,.0f} {numpy_s:>8.1f} "
                     f"{pairs / numpy_s:>12,.0f} {str(not same_matches(run.matches, reference)):>6} {block:>14,}")
        print(lines[-1], flush=True)
    lines.append("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
                 + f" on {os.cpu_count()} cores (a shared machine: other runs take some of them)")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
