"""florenz-data report OUTPUT [--diff OTHER]: what a split contains, and what an ablation changed.

Writes OUT/coverage.png (task × language heatmaps of annotation counts for train and eval, held-out
cells marked) and OUT/report.md (the same counts as tables, rejects per reason, missing translations,
translation acceptance per language from the store). With --diff, also OUT/diff.md: the plan's changes,
annotation counts per split × key before and after, and images that moved between splits.

Everything is read and written through Beam's FileSystems (OUT may be on gs:// or s3://). Nothing is
held as rows: the counts come from stats.json, the store's partitions of this run's fingerprint and
languages are read one part at a time (two columns, counted in Arrow), and --diff sorts the key and
split columns of both manifests in Arrow (about 0.6 GB of columns for two outputs of 12 M images, and
twice that more while sorting).
"""
from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from apache_beam.io.filesystems import FileSystems

from pipeline.output_files import read_manifest, refuse_old_layout
from schemas.arrow import STATUS_ACCEPTED
from schemas.coverage import CoveragePlan
from schemas.errors import InputError
from schemas.layout import CONFIG_COPY, REPORT_DIR, STATS, SUCCESS
from schemas.records import SPLIT_TRAIN, SPLITS, TASK_CAPTION, TASKS
from schemas.sample import task_language
from transforms.atomic import join, write_bytes_atomic
from transforms.range_reader import open_ranged
from transforms.store_verdicts import checks_version
from transforms.translation_store import REREADS, partition_dir, partition_parts

OLDER_CHECKS = "older_checks"  # partition_outcomes: entries judged under older checks than this code's


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


class Output:
    """A finished pipeline output, read through Beam's FileSystems (local, gs://, s3://)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        if not FileSystems.exists(join(self.root, SUCCESS)):
            raise InputError(root, f"not a finished pipeline output (no {SUCCESS})")
        refuse_old_layout(self.root)
        self.stats = json.loads(_read_text(join(self.root, STATS)))
        self.config = yaml.safe_load(_read_text(join(self.root, CONFIG_COPY)))
        self.plan = CoveragePlan.from_dict(self.config["plan"])

    def counts(self, split: str) -> dict[str, int]:
        return dict(self.stats["splits"].get(split, {}).get("annotations", {}))

    def manifest_splits(self) -> pa.Table:
        """The manifest's key and split columns."""
        return read_manifest(self.root, ["key", "split"])

    def held_out(self, split: str, task: str, lang: str) -> bool:
        """A caption label the plan withholds from training."""
        return split == SPLIT_TRAIN and task == TASK_CAPTION and lang in self.plan.held_out_caption_languages

    def translation_acceptance(self) -> dict[str, dict[str, int]]:
        """Per language of the plan: accepted and rejected-per-reason entries of this run's store
        fingerprint, read from its partitions only (a key stored twice, before compact-store merged
        the parts, counts twice)."""
        store = self.config.get("store", {})
        if not store.get("path"):
            return {}
        counts = {lang: partition_outcomes(partition_dir(store["path"], store["fingerprint"], lang))
                  for lang in sorted(self.plan.translation_languages)}
        return {lang: c for lang, c in counts.items() if c}


def partition_outcomes(directory: str) -> dict[str, int]:
    """accepted / rejected_<reason> counts of one store partition as stored, and OLDER_CHECKS: how
    many of them older checks judged (builds judge those again as they read them; `recheck` stores
    the new verdicts). Counted in Arrow one part at a time (three columns). If compact-store deletes a
    listed part meanwhile, counted again from a new listing."""
    for _ in range(REREADS + 1):
        counts: Counter = Counter()
        try:
            for part in partition_parts(directory):
                with open_ranged(part) as f:
                    parquet = pq.ParquetFile(f)
                    versioned = "checks_version" in parquet.schema_arrow.names
                    table = parquet.read(columns=["status", "reason", *(["checks_version"] if versioned else [])])
                current = pc.sum(pc.equal(table["checks_version"], checks_version())).as_py() if versioned else 0
                counts[OLDER_CHECKS] += table.num_rows - (current or 0)
                grouped = table.group_by(["status", "reason"], use_threads=False).aggregate([("status", "count")])
                for row in grouped.to_pylist():
                    outcome = STATUS_ACCEPTED if row["status"] == STATUS_ACCEPTED else f"rejected_{row['reason']}"
                    counts[outcome] += row["status_count"]
        except FileNotFoundError:
            continue
        return dict(sorted((k, v) for k, v in counts.items() if v))
    raise InputError(directory, f"translation store parts vanished while the report read them, {REREADS + 1} "
                                "times over (compact-store ran again and again?); run the report again")


def count_table(output: Output, split: str) -> str:
    counts = output.counts(split)
    langs = output.plan.languages
    lines = [f"| {split} | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    for task in TASKS:
        cells = []
        for lang in langs:
            n = counts.get(task_language(task, lang), 0)
            cells.append(f"{n:,} (held out)" if output.held_out(split, task, lang) else f"{n:,}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(output: Output) -> bytes:
    """The PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = output.plan.languages
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(2 + 0.9 * len(langs) * len(SPLITS), 2.8))
    for ax, split in zip(axes, SPLITS):
        counts = output.counts(split)
        grid = [[counts.get(task_language(t, l), 0) for l in langs] for t in TASKS]
        top = max(max(row) for row in grid) or 1
        ax.imshow(grid, cmap="Blues", aspect="auto", vmin=0, vmax=top * 1.6)  # keep dark text readable
        for i, task in enumerate(TASKS):
            for j, lang in enumerate(langs):
                held = output.held_out(split, task, lang)
                source = task != TASK_CAPTION and lang == output.plan.source_language
                label = "held out" if held else "source" if source else f"{grid[i][j]:,}"
                ax.text(j, i, label, ha="center", va="center", fontsize=9,
                        color="crimson" if held else "grey" if source else "black")
                if held:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                               edgecolor="crimson", lw=0))
        ax.set_xticks(range(len(langs)), langs)
        ax.set_yticks(range(len(TASKS)), TASKS)
        ax.set_title(f"{split}: {output.stats['splits'].get(split, {}).get('images', 0):,} images")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def report_markdown(output: Output) -> str:
    stats = output.stats
    parts = [f"# Coverage report: {output.root}", "",
             f"Caption languages: {', '.join(output.plan.caption_languages)}; held out: "
             f"{', '.join(output.plan.held_out_caption_languages) or 'none'}; translations: "
             f"{', '.join(output.plan.translation_languages)}; translating other images' captions: "
             f"{', '.join(output.plan.other_image_languages) or 'none'}.", ""]
    for split in SPLITS:
        parts += [count_table(output, split), ""]
        missing = stats["splits"].get(split, {}).get("missing_translation", {})
        if missing:
            parts += [f"Missing translations in {split} (annotations left out): "
                      + ", ".join(f"{k} {v:,}" for k, v in sorted(missing.items())), ""]
    parts += ["## Rejects", "", "| level | reason | count |", "|---|---|---:|"]
    for level in ("images", "captions"):
        for reason, n in sorted(stats[level]["rejected"].items()):
            parts.append(f"| {level} | {reason} | {n:,} |")
    parts += ["", "## Translation acceptance (store entries of this run's translator)", "",
              "| lang | accepted | rejected | rate | rejections |", "|---|---:|---:|---:|---|"]
    older = {}
    for lang, outcomes in output.translation_acceptance().items():
        older[lang] = outcomes.pop(OLDER_CHECKS, 0)
        accepted = outcomes.get(STATUS_ACCEPTED, 0)
        rejected = {k.removeprefix("rejected_"): v for k, v in outcomes.items() if k != STATUS_ACCEPTED}
        total = accepted + sum(rejected.values())
        parts.append(f"| {lang} | {accepted:,} | {sum(rejected.values()):,} | {accepted / total:.1%} | "
                     + ", ".join(f"{k} {v}" for k, v in rejected.items()) + " |")
    if any(older.values()):
        parts += ["", "Judged by older checks than this code's (version {}), as stored above: {}. Builds judge them "
                  "again as they read them; `florenz-data recheck STORE` stores the new verdicts.".format(
                      checks_version(), ", ".join(f"{lang} {n:,}" for lang, n in older.items() if n))]
    return "\n".join(parts) + "\n"


def diff(after: Output, before: Output) -> dict[str, Any]:
    """What changed from `before` to `after`: plan fields, counts per split × key, images moved."""
    plan = {name: {"before": before.config["plan"].get(name), "after": after.config["plan"].get(name)}
            for name in sorted(set(before.config["plan"]) | set(after.config["plan"]))
            if before.config["plan"].get(name) != after.config["plan"].get(name)}
    counts = {}
    for split in SPLITS:
        b, a = before.counts(split), after.counts(split)
        changed = {k: {"before": b.get(k, 0), "after": a.get(k, 0)} for k in sorted(set(a) | set(b))
                   if a.get(k, 0) != b.get(k, 0)}
        if changed:
            counts[split] = changed
    return {"plan": plan, "annotations": counts, **_images_moved(before.manifest_splits(), after.manifest_splits())}


def _images_moved(old: pa.Table, new: pa.Table) -> dict[str, Any]:
    """Keys per (split before -> split after) where it changed, and keys in only one manifest. Both
    (key, split) tables become one, sorted by key and side, where a key in both is two neighbours:
    no hash table of 12 M keys, only the keys sorted once more (measured at 1 M keys a side: 53 MB of
    columns, 115 MB more while sorting)."""
    both = pa.concat_tables([old.append_column("after", pa.repeat(False, len(old))),
                             new.append_column("after", pa.repeat(True, len(new)))])
    both = both.take(pc.sort_indices(both, [("key", "ascending"), ("after", "ascending")])).combine_chunks()
    key, split, last = both["key"], both["split"], max(len(both) - 1, 0)
    in_both = pc.equal(key.slice(1), key.slice(0, last))  # at i: row i before, row i+1 after (keys unique per side)
    was, now = split.slice(0, last).filter(in_both), split.slice(1).filter(in_both)
    moves = pc.binary_join_element_wise(was, now, "->").filter(pc.not_equal(was, now))
    counts = {c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(moves)}
    paired = pc.sum(in_both).as_py() or 0
    return {"images_moved": dict(sorted(counts.items())), "images_only_before": len(old) - paired,
            "images_only_after": len(new) - paired}


def diff_markdown(result: dict[str, Any], after: Output, before: Output) -> str:
    lines = [f"# {after.root} vs {before.root}", "", "| plan field | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {v['before']} | {v['after']} |" for k, v in result["plan"].items()]
    lines += ["", "| split | key | before | after | change |", "|---|---|---:|---:|---:|"]
    for split, keys in result["annotations"].items():
        lines += [f"| {split} | {k} | {v['before']:,} | {v['after']:,} | {v['after'] - v['before']:+,} |"
                  for k, v in keys.items()]
    lines += ["", f"Images moved between splits: {result['images_moved'] or 'none'}; only before: "
              f"{result['images_only_before']}; only after: {result['images_only_after']}."]
    return "\n".join(lines) + "\n"


def write_report(root: str, out: Optional[str] = None, against: Optional[str] = None) -> dict[str, Any]:
    """Write the report (and the diff against `against`) into `out` (default ROOT/report), each file
    atomically; returns the paths of report.md ("report"), coverage.png ("heatmap") and diff.md
    ("diff_report"), and the diff itself ("diff")."""
    output = Output(root)
    before = Output(against) if against else None
    folder = out or join(output.root, REPORT_DIR)
    files = {"coverage.png": heatmap(output), "report.md": report_markdown(output).encode("utf-8")}
    written: dict[str, Any] = {"report": join(folder, "report.md"), "heatmap": join(folder, "coverage.png")}
    if before is not None:
        result = diff(output, before)
        files["diff.md"] = diff_markdown(result, output, before).encode("utf-8")
        files["diff.json"] = json.dumps(result, indent=2, sort_keys=True).encode("utf-8")
        written.update(diff=result, diff_report=join(folder, "diff.md"))
    for name, data in files.items():
        write_bytes_atomic(join(folder, name), data, folder)  # a temporary name beside it, renamed
    return written
