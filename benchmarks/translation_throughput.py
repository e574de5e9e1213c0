"""Benchmark: the pipeline's translation stage (Beam, deterministic batches, the dispatcher's streaming
client over HTTP to a vLLM server, checks, store) vs vLLM's own offline `LLM.generate` over the same
prompts, model, sampling and engine limits; the same stage in 2 SDK processes sharing the one server
vs 1 process; and the dedup factor on the 24,719 real COCO val2017 captions (requests per caption).

    .venv/bin/python benchmarks/translation_throughput.py [--prompts 512] [--sizes 128x3,1024x8]

Models: the tiny trained translator's tokenizer with random Gemma-2 weights of the given
hidden x layers sizes (built by scripts/train_tiny_translator.py --untrained). A random model's
greedy output is garbage but costs the same compute in both paths, which is what is compared.

Both sides run with the same engine limits, vLLM's offline defaults on the CPU backend (ENGINE): the
server's own defaults are smaller (128 sequences, 2,048 batched tokens), which would measure vLLM's
settings, not the pipeline. The pipeline's max_in_flight is the server's --max-num-seqs. While the
pipeline runs, the server's own gauges are polled (vllm:num_requests_running and _waiting): the peak
it held, and the mean it ran while it had work, against its limit.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
COCO_TEXT = REPO.parent / "shared" / "data" / "coco-captions-val2017-text.json"
ENGINE = {"max-num-seqs": 256, "max-num-batched-tokens": 4096}  # vLLM's offline defaults on the CPU backend
SERVER_ARGS = ("--gpu-memory-utilization", "0.2", "--max-model-len", "512", "--dtype", "float32",
               *(x for name, value in ENGINE.items() for x in (f"--{name}", str(value))))
TWO_PROCESSES = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")


def coco_texts() -> list[str]:
    """All caption texts, validated and normalized as the pipeline does (paper rule: > 25 chars)."""
    from schemas.config import ValidationRules
    from transforms.validate import check_caption

    data = json.loads(COCO_TEXT.read_text())
    return [t for t, _ in (check_caption(a["caption"], ValidationRules()) for a in data["annotations"]) if t]


def build_model(hidden: int, layers: int, root: Path) -> Path:
    out = root / f"random-{hidden}x{layers}"
    if not (out / "config.json").exists():
        subprocess.run([str(VLLM_PYTHON), str(REPO / "scripts" / "train_tiny_translator.py"), "--out", str(out),
                        "--untrained", "--hidden", str(hidden), "--layers", str(layers)], check=True,
                       capture_output=True)
    return out


def params_of(model: Path) -> int:
    """Parameter count from the safetensors header (8-byte length, then JSON with tensor shapes)."""
    with open(model / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


class ServerGauges:
    """Polls a vLLM server's /metrics in a thread: the peak it held (running + waiting), and the mean
    it ran over the samples where it held any."""

    def __init__(self, url: str, every_s: float = 0.2):
        self._metrics = url.removesuffix("/v1") + "/metrics"
        self._every_s = every_s
        self._samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self) -> tuple[int, int]:
        with urllib.request.urlopen(self._metrics, timeout=10) as r:
            text = r.read().decode()
        value = {name: int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith(name + "{")))
                 for name in ("vllm:num_requests_running", "vllm:num_requests_waiting")}
        return value["vllm:num_requests_running"], value["vllm:num_requests_waiting"]

    def _poll(self) -> None:
        while not self._stop.wait(self._every_s):
            self._samples.append(self._read())

    def __enter__(self) -> "ServerGauges":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        busy = [(running, waiting) for running, waiting in self._samples if running + waiting]
        return {"peak_held": max((r + w for r, w in busy), default=0),
                "mean_running": sum(r for r, _ in busy) / len(busy) if busy else 0.0}


def pipeline_translate(texts: list[str], model: Path, url: str, root: Path, batch_size: int,
                       *beam_args: str) -> dict:
    """The translate stage on the DirectRunner with an empty store; wall time of the whole pipeline."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from schemas.config import StoreConfig, TranslatorConfig
    from transforms.translate import TranslateTexts

    translator = TranslatorConfig(model=str(model), endpoints=(url,), batch_size=batch_size,
                                  max_in_flight=ENGINE["max-num-seqs"])
    store = StoreConfig(str(root / f"store-{time.monotonic_ns()}"), translator.request.fingerprint)
    summary_path = root / "summary.json"
    with ServerGauges(url) as gauges:
        start = time.perf_counter()
        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_args])) as p:
            summary = (p | beam.Create(texts) | TranslateTexts(store, translator, ["de"]))["summary"]
            summary | beam.Map(lambda s: summary_path.write_text(json.dumps(s)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, **gauges.summary(), **json.loads(summary_path.read_text())}


def offline_generate(texts: list[str], model: Path, root: Path) -> dict:
    texts_path = root / "texts.json"
    texts_path.write_text(json.dumps(texts))
    engine = [x for name, value in ENGINE.items() for x in (f"--{name}", str(value))]
    result = subprocess.run([str(VLLM_PYTHON), str(REPO / "benchmarks" / "vllm_offline.py"), "--model", str(model),
                             "--texts", str(texts_path), "--lang", "de", *engine], check=True, capture_output=True,
                            text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]  # vLLM logs to stdout too
    if not lines:
        raise RuntimeError(f"vllm_offline.py printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def throughput(sizes: list[tuple[int, int]], n_prompts: int, batch_size: int, root: Path) -> Iterator[dict]:
    from schemas.config import ManagedServer
    from transforms.vllm_server import ManagedVLLMServer

    texts = sorted(set(coco_texts()))[:n_prompts]
    for hidden, layers in sizes:
        model = build_model(hidden, layers, root)
        server = ManagedVLLMServer(str(model), ManagedServer(command=(str(VLLM_PYTHON), "-m",
                                                                      "vllm.entrypoints.openai.api_server"),
                                                             args=SERVER_ARGS))
        try:
            url = server.base_url()
            one = pipeline_translate(texts, model, url, root, batch_size)
            two = pipeline_translate(texts, model, url, root, batch_size, *TWO_PROCESSES)
        finally:
            server.stop()
        offline = offline_generate(texts, model, root)
        per_request = offline["seconds"] / len(texts)
        row = {"model": f"Gemma-2 {hidden}x{layers}", "params_m": params_of(model) / 1e6, "prompts": len(texts),
               "output_tokens": offline["output_tokens"], "offline_s": offline["seconds"]}
        for name, run in (("one", one), ("two", two)):
            row[name] = {key: run.get(key, 0) for key in ("seconds", "sent", "peak_held", "mean_running")}
            row[name]["per_run"] = offline["seconds"] / run["seconds"]
            row[name]["per_request"] = per_request / (run["seconds"] / run["sent"])
        row["two_vs_one"] = row["two"]["per_request"] / row["one"]["per_request"]
        print(json.dumps(row), flush=True)
        yield row


def dedup() -> dict:
    """Requests per caption for the paper's 5 languages, from the same lookup the pipeline runs."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from schemas.config import StoreConfig
    from transforms.translate import TranslateTexts

    texts = coco_texts()
    raw = len(json.loads(COCO_TEXT.read_text())["annotations"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            summary = (p | beam.Create(texts)
                       | TranslateTexts(StoreConfig(f"{tmp}/store", "none"), None, ["de", "fr", "es", "ru", "zh"]))
            summary["summary"] | beam.Map(lambda s: out.write_text(json.dumps(s)))
        summary = json.loads(out.read_text())
    return {"captions": raw, "valid_captions": len(texts), "unique_texts": len(set(texts)),
            "requests": summary["requested"], "requests_per_caption": summary["requested"] / (raw * 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--sizes", default="128x3,1024x8", help="hidden x layers of the random models")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="requests per batch and store part; small enough that the prompts make two groups, "
                             "one per SDK process (the batch size no longer sets how many are in flight)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-translate-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    d = dedup()
    print(f"dedup: {d['captions']:,} COCO captions -> {d['valid_captions']:,} valid -> {d['unique_texts']:,} unique; "
          f"{d['requests']:,} requests for 5 languages = {d['requests_per_caption']:.3f} requests per caption-language")
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    rows = list(throughput(sizes, args.prompts, args.batch_size, root))
    limit = ENGINE["max-num-seqs"]
    print(f"\nserver and offline engine: max-num-seqs {limit}, max-num-batched-tokens {ENGINE['max-num-batched-tokens']}; "
          f"pipeline max_in_flight {limit}, batch_size {args.batch_size}")
    print("| model | params | vLLM offline s | SDK processes | pipeline s | requests sent | per-run ratio "
          "| per-request ratio | vs 1 process | server peak held | server mean running |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for processes, run in ((1, r["one"]), (2, r["two"])):
            versus = "1.00" if processes == 1 else f"{r['two_vs_one']:.2f}"
            print(f"| {r['model']} | {r['params_m']:.1f} M | {r['offline_s']:.1f} | {processes} | {run['seconds']:.1f} "
                  f"| {run['sent']:,} | {run['per_run']:.2f} | {run['per_request']:.2f} | {versus} "
                  f"| {run['peak_held']} / {limit} | {run['mean_running']:.0f} / {limit} |")


if __name__ == "__main__":
    main()
