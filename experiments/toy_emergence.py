"""The paper's question on the toy world, end to end with the project's own machinery (issue 18):
does captioning emerge in a language that has only translation data?

    .venv/bin/python experiments/toy_emergence.py --out ../out/toy-study            # the grid in README
    .venv/bin/python experiments/toy_emergence.py --out /tmp/t --sizes toy-s --steps 300 --seeds 0 --scenes 4000

Stages, each skipped when its output is there (a rerun resumes):
1. `florenz-data toy-world` renders the scenes; `florenz-data import-translations` puts the grammar's
   exact translations in a store (the store plays the translator);
2. tokenizers trained on the world's texts and the prompts (model/local_tokenizers.py);
3. one pipeline output per arm, built by `florenz-data build` and checked by `florenz-data verify`:
   other_image (the paper's pairing), own_caption, no_translation (held-out languages get no data at
   all: the lower bound), captioned (held-out languages captioned: the upper bound); the same images
   fall in the eval split in every arm (the split follows image content);
4. `florenz-sweep`: every arm x size x step budget x seed is its own florenz-train run (its own
   cosine schedule), the patch-stem vision tower trained with everything else;
5. per finished run, the toy metrics (model/toy_eval.py) for every caption language; the table
   (study.json; study.md with the fits), plots, and scaling fits of the held-out caption loss per arm with
   confidence intervals (model/scaling.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.configuration import PARTS  # noqa: E402
from model.local_tokenizers import train_tokenizers  # noqa: E402
from model.prompts import CAPTION_TASK, DECODER_PREFIXES, TRANSLATION_TASK  # noqa: E402
from schemas.languages import LANGUAGE_NAMES  # noqa: E402

FLORENZ_DATA = str(Path(sys.executable).with_name("florenz-data"))
ARMS = ("other_image", "own_caption", "no_translation", "captioned")
SEEN = ("en", "de")  # captioned in every arm
METRICS = ("loss", "grounding_gap", "target_language_share", "chrf", "attribute_accuracy", "content_accuracy")


def _run(cmd: Sequence[str], log: Path) -> None:
    with open(log, "a", encoding="utf-8") as out:
        code = subprocess.call(list(cmd), stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {code}); see {log}")


def make_world(out: Path, scenes: int, seed: int, held_out: Sequence[str]) -> Path:
    """Scenes and the filled store; returns the store's folder."""
    world, store = out / "world", out / "store"
    if not (world / "world.json").exists():
        _run([FLORENZ_DATA, "toy-world", str(world), "--scenes", str(scenes), "--seed", str(seed)], out / "world.log")
    built = json.loads((world / "world.json").read_text())
    if (built["scenes"], built["seed"]) != (scenes, seed):
        raise SystemExit(f"{world} holds a world of {built['scenes']} scenes, seed {built['seed']}: use another --out")
    if not (out / "store.done").exists():
        _run([FLORENZ_DATA, "import-translations", str(world / "translations.parquet"), "--store", str(store),
              "--languages", ",".join(["de", *held_out]), "--fingerprint", f"import-toy{seed}"], out / "store.log")
        (out / "store.done").write_text("ok\n")
    return store


def tokenizer_texts(held_out: Sequence[str]) -> list[str]:
    from pipeline.toy_world import translations_table

    table = translations_table(["en", "de", *held_out]).to_pydict()
    prompts = [f"The target language is {LANGUAGE_NAMES[lang]}. {CAPTION_TASK} {TRANSLATION_TASK}"
               for lang in table]
    return [text for column in table.values() for text in column] + prompts + list(DECODER_PREFIXES.values())


def arm_plan(arm: str, held_out: Sequence[str], seed: int, eval_fraction: float) -> dict[str, Any]:
    translated = ["de", *held_out]
    plan = {"languages": ["en", *translated], "source_language": "en", "caption_languages": list(SEEN),
            "translation_languages": translated, "eval_fraction": eval_fraction, "seed": seed, "shard_size": 2000,
            "translation_pairing": {"de": "own_caption", **{lang: "other_image" for lang in held_out}}}
    if arm == "own_caption":
        plan["translation_pairing"] = {lang: "own_caption" for lang in translated}
    elif arm == "no_translation":
        plan.update(languages=["en", "de"], translation_languages=["de"], translation_pairing={"de": "own_caption"})
    elif arm == "captioned":
        plan["caption_languages"] = ["en", *translated]
    elif arm != "other_image":
        raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    return plan


def build_arm(out: Path, arm: str, store: Path, plan: dict, seed: int) -> Path:
    output = out / "arms" / arm
    if not (output / "_SUCCESS").exists():
        config = {"output": str(output), "store": {"path": str(store), "fingerprint": f"import-toy{seed}"},
                  "sources": [{"name": "toy", "type": "parquet", "files": str(out / "world" / "images" / "*.parquet"),
                               "id_column": "key", "caption_column": "caption", "image_column": "image"}],
                  "plan": plan}
        path = out / "arms" / f"{arm}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        _run([FLORENZ_DATA, "build", str(path)], out / "arms" / f"{arm}.log")
        _run([FLORENZ_DATA, "verify", str(output)], out / "arms" / f"{arm}.log")
    return output


def write_sweep(out: Path, args: argparse.Namespace, outputs: dict[str, Path], tokenizers: tuple[Path, Path]) -> Path:
    train = {"data": {"output": str(next(iter(outputs.values()))), "image_size": 64, "batch_size": args.batch_size,
                      "workers": 0, "shuffle_buffer": 512, "eval_images": args.eval_images, "max_target_tokens": 40},
             "model": {"size": args.sizes[0], "init": "random", "encoder_tokenizer": str(tokenizers[0]),
                       "decoder_tokenizer": str(tokenizers[1])},
             "optim": {"steps": max(args.steps), "lr": args.lr, "warmup_steps": min(args.steps) // 10,
                       "weight_decay": 0.01},
             "run": {"out": str(out / "unused"), "seed": 0, "precision": "fp32", "log_every": 50,
                     "eval_every": 10 ** 9, "checkpoint_every": 10 ** 9, "progress": False},
             "trainable": {"parts": list(PARTS)},  # from scratch: the patch stem trains too
             "eval": {"max_target_tokens": 40}}
    (out / "train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
    sweep = {"train": "train.yaml", "out": "sweep", "sizes": list(args.sizes), "steps": list(args.steps),
             "seeds": list(args.seeds), "splits": {arm: str(path) for arm, path in outputs.items()}}
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return out / "sweep.yaml"


def measure_runs(out: Path, rows: list[dict], languages: Sequence[str], eval_images: int) -> list[dict]:
    """The sweep's rows with the toy metrics of each run's final model (cached per run in toy_metrics.json)."""
    from model.checkpoint import latest_checkpoint
    from model.toy_eval import toy_metrics
    from model.train_config import load_train_config

    measured = []
    for row in rows:
        folder = out / "sweep" / "runs" / row["run"]
        cache = folder / "toy_metrics.json"
        if not cache.exists():
            config = load_train_config(str(folder / "train.yaml"))
            metrics = toy_metrics(config, latest_checkpoint(folder / "checkpoints"), languages, eval_images)
            cache.write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        metrics = json.loads(cache.read_text())
        flat = {f"{name}/{lang}": metrics[lang][name] for lang in languages for name in METRICS}
        measured.append({**row, **flat})
    return measured


def summarise(rows: list[dict], held_out: Sequence[str]) -> list[dict]:
    """One line per (arm, size, steps): the held-out languages' metrics averaged over languages and seeds,
    the seen ones' grounding gap, and the seed spread of the target-language share."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["split"], row["size"], row["steps"]), []).append(row)
    table = []
    by_order = lambda item: (ARMS.index(item[0][0]), item[1][0]["params"], item[0][2])  # arm, model size, steps
    for (arm, size, steps), runs in sorted(groups.items(), key=by_order):
        line = {"arm": arm, "size": size, "params": runs[0]["params"], "steps": steps, "seeds": len(runs),
                "C": fmean(r["C"] for r in runs)}
        for name in METRICS:
            per_seed = [fmean(r[f"{name}/{lang}"] for lang in held_out) for r in runs]
            line[f"held_out_{name}"] = fmean(per_seed)
            if name == "target_language_share":
                line["held_out_target_language_share_range"] = [min(per_seed), max(per_seed)]
        line["seen_grounding_gap"] = fmean(r[f"grounding_gap/{lang}"] for r in runs for lang in SEEN)
        table.append(line)
    return table


def markdown(table: list[dict]) -> str:
    head = ("| arm | size | steps | seeds | held-out in target language | attribute acc. | content acc. (any language) "
            "| chrF | grounding gap (held-out / seen) | held-out loss |")
    lines = [head, "|" + "---|" * 10]
    for t in table:
        low, high = t["held_out_target_language_share_range"]
        lines.append(f"| {t['arm']} | {t['size']} | {t['steps']} | {t['seeds']} | "
                     f"{t['held_out_target_language_share']:.2f} ({low:.2f}–{high:.2f}) | "
                     f"{t['held_out_attribute_accuracy']:.2f} | {t['held_out_content_accuracy']:.2f} | "
                     f"{t['held_out_chrf']:.1f} | "
                     f"{t['held_out_grounding_gap']:+.3f} / {t['seen_grounding_gap']:+.3f} | {t['held_out_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(t["size"] for t in table))  # the table's order: by parameters
    panels = (("held_out_target_language_share", "answers in the held-out language"),
              ("held_out_attribute_accuracy", "held-out attribute accuracy"),
              ("held_out_content_accuracy", "held-out content (any language)"))
    fig, axes = plt.subplots(len(panels), len(sizes), figsize=(4.5 * len(sizes), 3.5 * len(panels)), squeeze=False)
    for column, size in enumerate(sizes):
        for row, (metric, label) in enumerate(panels):
            ax = axes[row][column]
            for arm in ARMS:
                points = sorted((t["steps"], t[metric]) for t in table if t["arm"] == arm and t["size"] == size)
                if points:
                    ax.plot(*zip(*points), marker="o", label=arm)
            ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="steps", ylabel=label, title=size)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fit_arms(out: Path, rows: list[dict], held_out: Sequence[str]) -> dict:
    """Scaling fits (model/scaling.py) of the held-out caption loss per arm, with intervals."""
    from model.scaling import fit_test_set

    fits = {}
    for arm in ARMS:
        arm_rows = [{**r, "loss/held_out_caption": fmean(r[f"loss/{lang}"] for lang in held_out)}
                    for r in rows if r["split"] == arm]
        if not arm_rows:
            continue
        result = fit_test_set(arm_rows, "held_out_caption")
        fits[arm] = {law: {"unfitted": reason} for law, reason in result.unfitted.items()}
        if result.compute:
            fits[arm]["compute"] = result.compute.to_dict()
        if result.params_samples:
            fits[arm]["params_samples"] = result.params_samples.to_dict()
    (out / "fits.json").write_text(json.dumps(fits, indent=2, sort_keys=True))
    return fits


def _exponent(fit: dict, variable: str) -> str:
    value = fit["log10"][variable]
    return f"{variable}^{value['value']:+.2f} [{value['low']:+.2f}, {value['high']:+.2f}]"


def fits_markdown(fits: dict) -> str:
    """The fits per arm: exponents with their intervals (fits.json's confidence), r² and rows fitted."""
    lines = ["| arm | held-out loss vs compute (frontier) | r² | n | held-out loss vs P and S | r² | n |",
             "|" + "---|" * 7]
    for arm, laws in fits.items():
        cells = [arm]
        for law in ("compute", "params_samples"):
            fit = laws.get(law, {})
            if "unfitted" in fit or not fit:
                cells += [f"not fitted: {fit.get('unfitted', 'no rows')}", "", ""]
            else:
                terms = " · ".join(_exponent(fit, v) for v in fit["variables"])
                cells += [f"L ∝ {terms}", f"{fit['r2']:.2f}", str(fit["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    confidence = next((f["confidence"] for laws in fits.values() for f in laws.values() if "confidence" in f), 0.95)
    return "\n".join(lines) + f"\n\nExponents with {confidence:.0%} intervals.\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--held-out", default="fr,es,ru,zh", help="languages with translation data only")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--sizes", default="toy-s,toy-m,toy-l")
    parser.add_argument("--steps", default="150,300,600", help="step budgets, each its own schedule")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-fraction", type=float, default=0.05)
    parser.add_argument("--eval-images", type=int, default=128, help="eval images per metric")
    args = parser.parse_args(argv)
    held_out = args.held_out.split(",")
    args.sizes, args.seeds = args.sizes.split(","), [int(s) for s in args.seeds.split(",")]
    args.steps = [int(s) for s in args.steps.split(",")]
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = make_world(out, args.scenes, args.world_seed, held_out)
    tokenizers = train_tokenizers(tokenizer_texts(held_out), out / "tokenizers", 1000, 1000)
    outputs = {arm: build_arm(out, arm, store, arm_plan(arm, held_out, args.world_seed, args.eval_fraction),
                              args.world_seed) for arm in args.arms.split(",")}
    data_s = time.monotonic() - started
    from model.sweep import load_sweep_config, sweep

    rows, failed = sweep(load_sweep_config(str(write_sweep(out, args, outputs, tokenizers))))
    if failed:
        raise SystemExit(f"runs failed: {failed}")
    train_s = time.monotonic() - started - data_s
    rows = measure_runs(out, rows, ["en", "de", *held_out], args.eval_images)
    table = summarise(rows, held_out)
    (out / "study.json").write_text(json.dumps({"rows": rows, "table": table}, indent=2, ensure_ascii=False))
    plot(table, out / "study.png")
    fits = fit_arms(out, rows, held_out)
    (out / "study.md").write_text(markdown(table) + "\n" + fits_markdown(fits))
    wall = {"data_s": round(data_s), "train_s": round(train_s), "total_s": round(time.monotonic() - started)}
    (out / "wall_clock.json").write_text(json.dumps(wall))
    print(markdown(table))
    print(json.dumps({"wall_clock": wall, "fits": {a: sorted(f) for a, f in fits.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
