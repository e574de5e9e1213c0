"""`florenz-data`: build shards, translate captions, verify outputs, evaluate a translator.

    florenz-data build CONFIG [beam options]       shards from the sources + translation store
    florenz-data translate CONFIG [beam options]   fill the store only (vLLM translator); a finished build
                                                   in the output stays complete
    florenz-data run CONFIG [beam options]         translate the store's misses and build, in one pipeline
                                                   (and describe the images first, with a recaption section)
    florenz-data recaption CONFIG [beam options]   fill the description store only (a VLM served by vLLM)
    florenz-data verify OUTPUT [fs options]        re-read an output and check every invariant
    florenz-data report OUTPUT [--diff OTHER] [fs options]   coverage heatmap + tables, what an ablation changed
    florenz-data compact-store STORE [--fingerprint FP] [beam options]   merge small store parts, migrate old stores
    florenz-data recheck STORE [--fingerprint FP] [beam options]   re-judge stored answers under the current checks
    florenz-data eval-translator CONFIG --reference multi30k:de   BLEU/chrF + rejection rates
    florenz-data import-translations SOURCE --store STORE --languages de,fr [beam options]   pre-made
                                                   translations into the store, checked, under import-<name>

Beam options pass through: --direct_num_workers 2 --direct_running_mode multi_processing,
--runner DataflowRunner ..., --runner PrismRunner --prism_location BINARY. Every command takes Beam's
filesystem options (fs options) for its s3:// or gs:// paths: --s3_endpoint_url URL --s3_access_key_id ID
--s3_secret_access_key KEY --s3_region_name REGION, --project P ...

The translator is the config's `translator` section; --endpoint URL (a server you run) or
--managed-command CMD (a server the run starts and stops) with --model M replace its server.
`translate` and `run` without a translator section stop before touching anything.

Exit codes: 0 done; 1 done, but something needs a look (failed requests, unbalanced counts, verify's
problems); 2 stopped with one line saying why (`config error: FIELD: ...`, an unusable input file, a
build missing translations, an output another run holds).
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import TYPE_CHECKING, Optional

from schemas.errors import ConfigError, HideTaggedErrors, find_tagged_error

if TYPE_CHECKING:
    from schemas.config import RunConfig


TRANSLATING = ("translate", "run")  # the commands that send captions to a translator


def _beam_args(rest: list[str]) -> list[str]:
    rest = [a for a in rest if a != "--"]
    if not any(a.startswith("--runner") for a in rest):
        rest = ["--runner", "DirectRunner", *rest]
    return rest


def _load(args: argparse.Namespace):
    from schemas.config import load_config

    overrides = {}
    if getattr(args, "endpoint", None):
        overrides["endpoints"] = args.endpoint
    if getattr(args, "managed_command", None):
        overrides["managed"] = {"command": shlex.split(args.managed_command),
                                "args": shlex.split(args.managed_args or "")}
    elif getattr(args, "managed_args", None):
        raise ConfigError("--managed-args", "needs --managed-command (the server those flags are for)")
    if getattr(args, "model", None):
        overrides["model"] = args.model
    if getattr(args, "retry_rejected", False):
        overrides["retry_rejected"] = True
    config = load_config(args.config, overrides)
    if overrides and config.translator is None:
        raise ConfigError("translator", "--endpoint/--managed-command/--model/--retry-rejected need a translator")
    return config


def _pipeline(args: argparse.Namespace, rest: list[str], build) -> Optional[RunConfig]:
    """Run `build(p, config, run_id)` on a new pipeline under the output's lease (None for a dry
    run, which runs nothing)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import require_translator
    from pipeline.object_stores import check_s3, config_paths
    from pipeline.output_run import output_run

    config = _load(args)
    if args.command in TRANSLATING:  # refused before the output is touched
        require_translator(config, args.command)
    options = PipelineOptions(_beam_args(rest))
    if args.dry_run:
        _dry_run(options, config, lambda p, c: build(p, c, "dry-run"))
        return None
    check_s3(config_paths(config), options)
    with output_run(config, args.command, writes_store=args.command in TRANSLATING) as run_id:
        logging.info("%s: %s, %d source(s) -> %s (run %s)", args.command, args.config, len(config.sources),
                     config.output, run_id)
        with beam.Pipeline(options=options) as p:
            build(p, config, run_id)
    return config


def _dry_run(options, config, build) -> None:
    """Construct the pipeline for the runner the options name, check the options as that runner would,
    and describe what would be submitted; nothing runs and nothing is written."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, StandardOptions, TestOptions,
                                                      WorkerOptions)

    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    from pipeline.job_graph import describe, submitted_proto

    cloud = options.view_as(GoogleCloudOptions)
    if options.view_as(StandardOptions).runner == "DataflowRunner":
        # With neither location valid Beam creates a default bucket, which needs GCP: refuse it here.
        validator = PipelineOptionsValidator(options, None)
        errors = [e for name in ("temp_location", "staging_location") for e in validator.validate_gcs_path(cloud, name)]
        if len(errors) == 2:
            raise ConfigError("--temp_location", "; ".join(errors))
    options.view_as(TestOptions).dry_run = True  # Beam's own flag: its checks skip their GCS calls
    cloud.no_auth = True
    try:
        p = beam.Pipeline(options=options)  # runs Beam's option validation for that runner
    except ValueError as error:
        raise ConfigError("beam options", str(error)) from error
    build(p, config)
    graph = describe(submitted_proto(p))  # Dataflow's own runner builds the job, in its dry-run mode
    worker = options.view_as(WorkerOptions)
    print(json.dumps({"dry_run": True, "runner": options.view_as(StandardOptions).runner or "DirectRunner",
                      "runner_class": type(p.runner).__name__,
                      "project": cloud.project, "region": cloud.region,
                      "sdk_container_image": worker.sdk_container_image, "machine_type": worker.machine_type,
                      "disk_size_gb": worker.disk_size_gb,
                      "dataflow_service_options": cloud.dataflow_service_options, **graph}, indent=2))


def _build(args: argparse.Namespace, rest: list[str]) -> int:
    from pipeline.build import build_shards
    from pipeline.summary import print_build_summary, report_failures, report_missing
    from schemas.layout import MISSING_TEXTS, STATS
    from transforms.atomic import join
    from transforms.missing import read_missing_summary

    translate = args.command == "run"
    config = _pipeline(args, rest, lambda p, c, run_id: build_shards(
        p, c, run_id, translate=translate, allow_missing=args.allow_missing_translations))
    if config is None:  # a dry run
        return 0
    missing = read_missing_summary(config.output)
    if missing is not None:
        report_missing(missing, join(config.output, MISSING_TEXTS), args.command)
        return 2
    stats = json.loads(_read_text(join(config.output, STATS)))
    print_build_summary(stats)
    if report_failures(stats.get("translation", {}), args.command, "annotations needing them were left out"):
        return 1
    recaption = stats.get("recaption")  # `run` with a recaption section
    if recaption is not None and (report_failures(recaption, args.command, model="the VLM", sent="requested",
                                                  items="images") or not recaption["balanced"]):
        return 1
    return 0 if stats["images"]["balanced"] and stats["captions"]["balanced"] else 1


def _translate(args: argparse.Namespace, rest: list[str]) -> int:
    from pipeline.build import translate_store
    from pipeline.summary import report_failures
    from schemas.layout import TRANSLATION_STATS
    from transforms.atomic import join

    config = _pipeline(args, rest, translate_store)
    if config is None:  # a dry run
        return 0
    summary = json.loads(_read_text(join(config.output, TRANSLATION_STATS)))
    print(json.dumps(summary, indent=2))
    return 1 if report_failures(summary, args.command) else 0


def _recaption(args: argparse.Namespace, rest: list[str]) -> int:
    from pipeline.build import recaption_store, require_recaption
    from pipeline.summary import report_failures
    from schemas.layout import RECAPTION_STATS
    from transforms.atomic import join

    require_recaption(_load(args))  # refused before the output is touched
    config = _pipeline(args, rest, recaption_store)
    if config is None:  # a dry run
        return 0
    summary = json.loads(_read_text(join(config.output, RECAPTION_STATS)))
    print(json.dumps(summary, indent=2))
    failed = report_failures(summary, args.command, model="the VLM", sent="requested", items="images")
    return 1 if failed or not summary["balanced"] else 0


def _verify(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.object_stores import check_s3
    from pipeline.verify import verify_output

    check_s3([args.output], PipelineOptions(rest))
    problems = verify_output(args.output, decode_images=args.decode)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"{args.output}: {len(problems)} problem(s)")
        return 1
    print(f"{args.output}: OK")
    return 0


def _eval_translator(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.eval_translator import DEFAULT_MULTI30K, evaluate_translator, read_multi30k
    from pipeline.object_stores import check_s3

    config = _load(args)
    check_s3([args.out], PipelineOptions(rest))
    if config.translator is None:
        raise ConfigError("translator", "eval-translator needs a translator section")
    corpus, _, lang = args.reference.partition(":")
    if corpus != "multi30k" or not lang:
        raise ConfigError("--reference", "expected multi30k:<lang>, e.g. multi30k:de")
    pairs = read_multi30k(args.multi30k or DEFAULT_MULTI30K, lang, args.split, args.limit)
    report = evaluate_translator(config.translator, pairs, lang, _beam_args(rest))
    report.update(reference=args.reference, split=args.split, model=config.translator.model)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        with FileSystems.create(args.out, mime_type="application/json") as f:
            f.write((text + "\n").encode("utf-8"))
    return 0


def _compact_store(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.compact_store import compact_store
    from pipeline.object_stores import check_s3
    from transforms.store_compaction import ROWS_PER_FILE

    rows_per_file = ROWS_PER_FILE if args.rows_per_file is None else args.rows_per_file
    if rows_per_file < 1:
        raise ConfigError("--rows-per-file", "must be at least 1")
    check_s3([args.store], PipelineOptions(rest))
    languages = [lang for lang in (args.languages or "").split(",") if lang]
    counts = compact_store(args.store, _beam_args(rest), args.fingerprint, languages, rows_per_file,
                           recheck=args.command == "recheck")
    print(json.dumps(counts, indent=2))
    return 0


def _import_translations(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.import_translations import import_translations, make_spec
    from pipeline.object_stores import check_s3

    spec = make_spec(args.source, args.languages, args.text_column, args.column or (), args.lang_column,
                     args.translation_column, args.format)
    check_s3([args.source, args.store], PipelineOptions(rest))
    summary = import_translations(spec, args.store, args.fingerprint, _beam_args(rest), args.rows_per_part)
    print(json.dumps(summary, indent=2))
    return 0


def _toy_world(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.object_stores import check_s3
    from pipeline.toy_world import write_world

    check_s3([args.out], PipelineOptions(rest))
    print(json.dumps(write_world(args.out, args.scenes, args.seed, args.image_size, args.rows_per_part,
                                 _beam_args(rest)), indent=2))
    return 0


def _report(args: argparse.Namespace, rest: list[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.object_stores import check_s3
    from pipeline.report import write_report

    check_s3([args.output, args.diff, args.out], PipelineOptions(rest))
    written = write_report(args.output, args.out, args.diff)
    print(_read_text(written["report"]))
    if "diff_report" in written:
        print(_read_text(written["diff_report"]))
    return 0


def _read_text(path: str) -> str:
    """A file the command wrote, read back through Beam's FileSystems (local disk or an object store)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def _translator_flags(command: argparse.ArgumentParser) -> None:
    server = command.add_mutually_exclusive_group()
    server.add_argument("--endpoint", action="append", default=None,
                        help="URL of a vLLM server you run (http://host:8000/v1); repeat to spread requests")
    server.add_argument("--managed-command", default=None,
                        help="start a vLLM server for the run and stop it after (translator.managed.command), "
                             "e.g. '.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server'")
    command.add_argument("--managed-args", default=None,
                         help="that server's extra flags, one string: --managed-args='--dtype float32'")
    command.add_argument("--model", default=None, help="the model that server serves (vllm serve MODEL)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, run, help_text in (("build", _build, "build shards from the sources and the translation store"),
                                 ("run", _build, "translate the store's misses, then build shards"),
                                 ("translate", _translate, "fill the translation store only")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("config")
        command.add_argument("--dry-run", action="store_true",
                             help="construct the pipeline for the chosen runner and check its options; submit nothing")
        if name != "translate":
            command.add_argument("--allow-missing-translations", action="store_true",
                                 help="leave out (and count) annotations whose translation is missing, "
                                      "instead of stopping")
        if name != "build":
            _translator_flags(command)
            command.add_argument("--retry-rejected", action="store_true",
                                 help="translate again what the store holds as rejected")
        command.set_defaults(run=run)
    recaption = sub.add_parser("recaption", help="describe each distinct image with a VLM into the description "
                                                 "store (the config's recaption section); writes no shards")
    recaption.add_argument("config")
    recaption.add_argument("--dry-run", action="store_true",
                           help="construct the pipeline for the chosen runner and check its options; submit nothing")
    recaption.set_defaults(run=_recaption)
    verify = sub.add_parser("verify", help="check an output folder's invariants")
    verify.add_argument("output")
    verify.add_argument("--decode", action="store_true", help="also decode every image")
    verify.set_defaults(run=_verify)
    report = sub.add_parser("report", help="coverage heatmap (PNG) + markdown tables of an output; --diff")
    report.add_argument("output")
    report.add_argument("--diff", default=None, help="another output to compare with (what an ablation changed)")
    report.add_argument("--out", default=None, help="folder for the report (default OUTPUT/report)")
    report.set_defaults(run=_report)
    for name, help_text in (("compact-store", "merge a translation store's small parts into few large files per "
                                              "(fingerprint, lang); moves an old flat store into partitions"),
                            ("recheck", "judge the store's answers again under the current checks and store the "
                                        "new verdicts (rewriting those partitions as compact-store does); sends "
                                        "no request")):
        compact = sub.add_parser(name, help=help_text)
        compact.add_argument("store")
        compact.add_argument("--fingerprint", default=None, help="only this translator fingerprint's partitions")
        compact.add_argument("--languages", default=None, help="only these languages (comma-separated); with "
                                                               "--fingerprint, nothing is listed before the pipeline "
                                                               "runs")
        compact.add_argument("--rows-per-file", type=int, default=None,
                             help="rows per compacted file (default 1,000,000)")
        compact.set_defaults(run=_compact_store)
    imported = sub.add_parser("import-translations", help="load pre-made translations (Parquet or JSONL) into the "
                                                          "store under their own fingerprint, through the checks")
    imported.add_argument("source", help="a Parquet or JSONL file or glob (local, gs://, s3://)")
    imported.add_argument("--store", required=True, help="the translation store's path")
    imported.add_argument("--languages", required=True, help="target languages to import (comma-separated)")
    imported.add_argument("--fingerprint", default=None, help="import-<name> (default: derived from the files' "
                                                              "names and sizes)")
    imported.add_argument("--text-column", default="en", help="the English text's column (default en)")
    imported.add_argument("--column", action="append", default=None, metavar="LANG=COLUMN",
                          help="a language's column when it is not named by its code; repeat")
    imported.add_argument("--lang-column", default=None, help="long format: the column naming each row's language")
    imported.add_argument("--translation-column", default="translation",
                          help="long format: the translation's column (default translation)")
    imported.add_argument("--format", choices=("parquet", "jsonl"), default=None,
                          help="default: from the source's name")
    imported.add_argument("--rows-per-part", type=int, default=None, help="store rows per part (default 4096)")
    imported.set_defaults(run=_import_translations)
    toy = sub.add_parser("toy-world", help="render the toy world's scenes (Parquet) and its exact translations "
                                           "(for import-translations): inputs for the emergence study")
    toy.add_argument("out", help="folder to write (local, gs://, s3://)")
    toy.add_argument("--scenes", type=int, required=True, help="how many scenes to render")
    toy.add_argument("--seed", type=int, default=0, help="the world's seed (scene i is fixed by seed and i)")
    toy.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    toy.add_argument("--rows-per-part", type=int, default=5000, help="scenes per Parquet part (default 5000)")
    toy.set_defaults(run=_toy_world)
    evaluate = sub.add_parser("eval-translator", help="BLEU/chrF and rejection rates on a parallel test set")
    evaluate.add_argument("config")
    _translator_flags(evaluate)
    evaluate.add_argument("--reference", required=True, help="multi30k:<lang> (de, fr, cs)")
    evaluate.add_argument("--split", default="test_2016_flickr", help="multi30k split (train, val, test_2016_flickr)")
    evaluate.add_argument("--limit", type=int, default=None, help="first N pairs only")
    evaluate.add_argument("--multi30k", default=None, help="Multi30K folder (default ../shared/data/multi30k)")
    evaluate.add_argument("--out", default=None, help="also write the report JSON here")
    evaluate.set_defaults(run=_eval_translator)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("verify", "report"):  # no pipeline: filesystem options only, and no typo passes
        from pipeline.object_stores import unknown_args

        unknown = unknown_args(rest)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)} (beyond the command's own, only "
                         "Beam's filesystem options are taken: --s3_endpoint_url, --project ...)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from schemas.secrets import install_log_redaction

    install_log_redaction()  # API keys (translator.api_key_env) and URL passwords never reach a log line
    for handler in logging.getLogger().handlers:
        handler.addFilter(HideTaggedErrors())  # printed once, as one line, below
    for noisy in ("apache_beam", "httpx", "httpx2", "openai"):  # keep our progress lines readable
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from pipeline.object_stores import set_filesystem_options

        set_filesystem_options(_beam_args(rest))  # before the first I/O, config loading included
        return args.run(args, rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # runners wrap a worker's InputError in their own types: find it by its tag
        message = find_tagged_error(str(e))
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
