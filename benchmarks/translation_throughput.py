"""Benchmark: the pipeline's translation stage (Beam + RunInference + HTTP to a vLLM server + checks
+ store) vs vLLM's own offline `LLM.generate` over the same prompts, model and sampling; and the
dedup factor on the 24,719 real COCO val2017 captions (requests sent per caption).

    .venv/bin/python benchmarks/translation_throughput.py [--prompts 512] [--sizes 128x3,1024x8]

Models: the tiny trained translator's tokenizer with random Gemma-2 weights of the given
hidden x layers sizes (built by scripts/train_tiny_translator.py --untrained). A random model's
greedy output is garbage but costs the same compute in both paths, which is what is compared.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
COCO_TEXT = REPO.parent / "shared" / "data" / "coco-captions-val2017-text.json"
SERVER_ARGS = ("--gpu-memory-utilization", "0.2", "--max-model-len", "512", "--dtype", "float32")


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


def pipeline_translate(texts: list[str], model: Path, url: str, root: Path, batch_size: int) -> dict:
    """The translate stage on the DirectRunner with an empty store; wall time of the whole pipeline."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from schemas.config import StoreConfig, TranslatorConfig, translator_sampling
    from schemas.prompts import translator_fingerprint
    from transforms.translate import TranslateTexts

    translator = TranslatorConfig(model=str(model), endpoints=(url,), batch_size=batch_size, concurrency=batch_size)
    store = StoreConfig(str(root / f"store-{time.monotonic_ns()}"),
                        translator_fingerprint(translator.model, translator_sampling(translator)))
    summary_path = root / "summary.json"
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        summary = (p | beam.Create(texts) | TranslateTexts(store, translator, ["de"]))["summary"]
        summary | beam.Map(lambda s: summary_path.write_text(json.dumps(s)))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **json.loads(summary_path.read_text())}


def offline_generate(texts: list[str], model: Path, root: Path) -> dict:
    texts_path = root / "texts.json"
    texts_path.write_text(json.dumps(texts))
    result = subprocess.run([str(VLLM_PYTHON), str(REPO / "benchmarks" / "vllm_offline.py"), "--model", str(model),
                             "--texts", str(texts_path), "--lang", "de"], check=True, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]  # vLLM logs to stdout too
    if not lines:
        raise RuntimeError(f"vllm_offline.py printed no result:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def throughput(sizes: list[tuple[int, int]], n_prompts: int, batch_size: int, root: Path) -> list[dict]:
    from schemas.config import ManagedServer
    from transforms.vllm_server import ManagedVLLMServer

    texts = sorted(set(coco_texts()))[:n_prompts]
    rows = []
    for hidden, layers in sizes:
        model = build_model(hidden, layers, root)
        server = ManagedVLLMServer(str(model), ManagedServer(command=(str(VLLM_PYTHON), "-m",
                                                                      "vllm.entrypoints.openai.api_server"),
                                                             args=SERVER_ARGS))
        try:
            url = server.base_url()
            piped = pipeline_translate(texts, model, url, root, batch_size)
        finally:
            server.stop()
        offline = offline_generate(texts, model, root)
        row = {"model": f"Gemma-2 {hidden}x{layers}", "params_m": params_of(model) / 1e6, "prompts": len(texts),
               "offline_s": offline["seconds"], "pipeline_s": piped["seconds"],
               "output_tokens": offline["output_tokens"], "sent": piped.get("sent", 0)}
        row["ratio"] = row["offline_s"] / row["pipeline_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


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
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-translate-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    d = dedup()
    print(f"dedup: {d['captions']:,} COCO captions -> {d['valid_captions']:,} valid -> {d['unique_texts']:,} unique; "
          f"{d['requests']:,} requests for 5 languages = {d['requests_per_caption']:.3f} requests per caption-language")
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    rows = throughput(sizes, args.prompts, args.batch_size, root)
    print("\n| model | params | prompts | output tokens | vLLM offline s | pipeline s | pipeline / offline throughput |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.1f}M | {r['prompts']} | {r['output_tokens']} | {r['offline_s']:.1f} | "
              f"{r['pipeline_s']:.1f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
