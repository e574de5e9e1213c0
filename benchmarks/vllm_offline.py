"""vLLM's own offline engine over the same chat prompts and sampling as the pipeline's translator:
the baseline for benchmarks/translation_throughput.py. Runs in .venv-vllm.

    .venv-vllm/bin/python benchmarks/vllm_offline.py --model DIR --texts texts.json --lang de
        [--max-num-seqs N] [--max-num-batched-tokens N]

Prints one JSON line: {"seconds": generate() wall time, "prompts": n, "output_tokens": n}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from schemas.prompts import RequestTemplate  # noqa: E402  (standard library only)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True, help="JSON list of English texts")
    parser.add_argument("--lang", default="de")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="as the server's flag (default: vLLM's)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="as the server's flag")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    llm = LLM(model=args.model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    tokenizer = llm.get_tokenizer()
    bodies = [RequestTemplate(model=args.model).body(t, args.lang) for t in texts]  # what the pipeline sends
    prompts = [tokenizer.apply_chat_template(b["messages"], tokenize=False, add_generation_prompt=True)
               for b in bodies]
    params = [SamplingParams(temperature=b["temperature"], stop=b["stop"], max_tokens=b["max_tokens"])
              for b in bodies]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "prompts": len(prompts),
                      "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}))


if __name__ == "__main__":
    main()
