"""florenz-data report OUTPUT [--diff OTHER]: what a split contains, and what an ablation changed.

Writes OUT/coverage.png (task × language heatmaps of annotation counts for train and eval, held-out
cells marked) and OUT/report.md (the same counts as tables, rejects per reason, missing translations,
translation acceptance per language from the store). With --diff, also OUT/diff.md: the plan's changes,
annotation counts per split × key before and after, and images that moved between splits.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import yaml
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import STATUS_ACCEPTED
from schemas.coverage import CoveragePlan
from schemas.records import TASKS
from schemas.sample import task_language
from transforms.translation_store import store_parts

SPLITS = ("train", "eval")


def _read_json(path: str) -> Any:
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


class Output:
    """A finished pipeline output, read through Beam's FileSystems (local or gs://)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        if not FileSystems.exists(f"{self.root}/_SUCCESS"):
            raise FileNotFoundError(f"{root} is not a finished pipeline output (no _SUCCESS)")
        self.stats = _read_json(f"{self.root}/stats.json")
        with FileSystems.open(f"{self.root}/config.yaml") as f:
            self.config = yaml.safe_load(f.read().decode("utf-8"))
        self.plan = CoveragePlan.from_dict(self.config["plan"])

    def counts(self, split: str) -> dict[str, int]:
        return dict(self.stats["splits"].get(split, {}).get("annotations", {}))

    def manifest_splits(self) -> dict[str, str]:
        with FileSystems.open(f"{self.root}/manifest.parquet") as f:
            table = pq.read_table(f, columns=["key", "split"])
        return dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist()))

    def held_out(self, split: str, task: str, lang: str) -> bool:
        """A caption label the plan withholds from training."""
        return split == "train" and task == "caption" and lang in self.plan.held_out_caption_languages

    def translation_acceptance(self) -> dict[str, dict[str, int]]:
        """Per language: accepted and rejected-per-reason entries of this run's store fingerprint."""
        store = self.config.get("store", {})
        result: dict[str, Counter] = {}
        for part in store_parts(store["path"]) if store.get("path") else []:
            with FileSystems.open(part) as f:
                table = pq.read_table(f, columns=["lang", "fingerprint", "status", "reason"])
            for row in table.to_pylist():
                if row["fingerprint"] == store.get("fingerprint"):
                    outcome = STATUS_ACCEPTED if row["status"] == STATUS_ACCEPTED else f"rejected_{row['reason']}"
                    result.setdefault(row["lang"], Counter())[outcome] += 1
        return {lang: dict(sorted(c.items())) for lang, c in sorted(result.items())}


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


def heatmap(output: Output, path: Path) -> None:
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
                source = task != "caption" and lang == output.plan.source_language
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_markdown(output: Output) -> str:
    stats = output.stats
    parts = [f"# Coverage report: {output.root}", "",
             f"Caption languages: {', '.join(output.plan.caption_languages)}; held out: "
             f"{', '.join(output.plan.held_out_caption_languages) or 'none'}; translations: "
             f"{', '.join(output.plan.translation_languages)}.", ""]
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
    for lang, outcomes in output.translation_acceptance().items():
        accepted = outcomes.get(STATUS_ACCEPTED, 0)
        rejected = {k.removeprefix("rejected_"): v for k, v in outcomes.items() if k != STATUS_ACCEPTED}
        total = accepted + sum(rejected.values())
        parts.append(f"| {lang} | {accepted:,} | {sum(rejected.values()):,} | {accepted / total:.1%} | "
                     + ", ".join(f"{k} {v}" for k, v in rejected.items()) + " |")
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
    old, new = before.manifest_splits(), after.manifest_splits()
    moved = Counter(f"{old[k]}->{new[k]}" for k in old.keys() & new.keys() if old[k] != new[k])
    return {"plan": plan, "annotations": counts, "images_moved": dict(moved),
            "images_only_before": len(old.keys() - new.keys()), "images_only_after": len(new.keys() - old.keys())}


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
    output = Output(root)
    folder = Path(out or Path(root) / "report")
    folder.mkdir(parents=True, exist_ok=True)
    heatmap(output, folder / "coverage.png")
    (folder / "report.md").write_text(report_markdown(output), encoding="utf-8")
    written: dict[str, Any] = {"report": str(folder / "report.md"), "heatmap": str(folder / "coverage.png")}
    if against:
        before = Output(against)
        result = diff(output, before)
        (folder / "diff.md").write_text(diff_markdown(result, output, before), encoding="utf-8")
        (folder / "diff.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        written["diff"] = result
    return written
