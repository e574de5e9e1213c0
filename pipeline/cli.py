"""`florenz-data`: build shards from a run config, and verify an output folder.

    florenz-data build CONFIG [beam options...]   e.g. --direct_num_workers 2, --runner DataflowRunner
    florenz-data verify OUTPUT
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from schemas.errors import ConfigError


def _build(args: argparse.Namespace, beam_args: list[str]) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import build_shards
    from schemas.config import load_config
    from transforms.finalize import STATS, clear_run_markers

    config = load_config(args.config)
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = ["--runner", "DirectRunner", *beam_args]
    options = PipelineOptions(beam_args)
    clear_run_markers(config.output)
    logging.info("building %s from %d source(s) into %s", args.config, len(config.sources), config.output)
    with beam.Pipeline(options=options) as p:
        build_shards(p, config)
    with open(f"{config.output}/{STATS}", encoding="utf-8") as f:
        stats = json.load(f)
    _print_summary(stats)
    return 0 if stats["images"]["balanced"] and stats["captions"]["balanced"] else 1


def _print_summary(stats: dict) -> None:
    images, captions = stats["images"], stats["captions"]
    print(f"images   read {images['read']:>8}  written {images['written']:>8}  rejected {images['rejected_total']:>8}")
    print(f"captions read {captions['read']:>8}  written {captions['written']:>8}  rejected {captions['rejected_total']:>8}")
    for split, s in stats["splits"].items():
        cells = "  ".join(f"{k}={v}" for k, v in s["annotations"].items())
        print(f"{split:<6} {s['images']} images in {s['shards']} shards: {cells}")
        if s["missing_translation"]:
            print(f"{'':<6} missing_translation: {s['missing_translation']}")


def _verify(args: argparse.Namespace, _: list[str]) -> int:
    from pipeline.verify import verify_output

    problems = verify_output(args.output, decode_images=args.decode)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"{args.output}: {len(problems)} problem(s)")
        return 1
    print(f"{args.output}: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build WebDataset shards from a run config")
    build.add_argument("config")
    build.set_defaults(run=_build)
    verify = sub.add_parser("verify", help="check an output folder's invariants")
    verify.add_argument("output")
    verify.add_argument("--decode", action="store_true", help="also decode every image")
    verify.set_defaults(run=_verify)
    args, rest = parser.parse_known_args(argv)
    if args.command == "verify" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    rest = [a for a in rest if a != "--"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # keep our progress lines readable
    try:
        return args.run(args, rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
