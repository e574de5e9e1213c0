"""Calibration of the translation checks on human references, before (CHECKS_VERSION 1: langdetect
alone: transforms/translation_checks.py as committed at BASELINE_COMMIT, loaded from git) and now,
measured in the same run.

    .venv/bin/python benchmarks/language_id_calibration.py [--train] [--out FILE]

References: Multi30K val + test_2016_flickr (de, fr, cs; `--train` adds its 29,000 lines) and CoMMuTE
(de, fr, cs, ru, zh, ar; both the correct and the incorrect translation: each is fluent human text in
its language, only one word differs). Each reference is checked as a translation of its English line
into its own language: any wrong_language or wrong_script is a false rejection. The other side, so
that a fix cannot just accept everything: for each target X, the references of every other language
Y (and English captions of other lines, i.e. an untranslated answer) are checked as translations into
X, and the share rejected (any reason) is the true-rejection rate. Cost: the mean time of one
check_translation call on the references (the common, accepted case) and on the other-language texts
(where both detectors run); memory: RSS added by loading each detector's model.
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = Path(os.environ.get("FLORENZ_SHARED_DATA", REPO.parent / "shared" / "data"))
BASELINE_COMMIT = "1501a6e"  # the last commit with CHECKS_VERSION 1


def baseline_checks() -> types.ModuleType:
    """The checks as they were at BASELINE_COMMIT, read from git (not a copy kept in the tree)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:transforms/translation_checks.py"],
                            check=True, capture_output=True, text=True).stdout
    module = sys.modules["translation_checks_v1"] = types.ModuleType("translation_checks_v1")
    exec(compile(source, f"{BASELINE_COMMIT}:transforms/translation_checks.py", "exec"), module.__dict__)
    return module
MULTI30K_LANGUAGES = ("de", "fr", "cs")
COMMUTE_LANGUAGES = ("de", "fr", "cs", "ru", "zh", "ar")
OTHER_PER_LANGUAGE = 300  # texts of each other language checked as target X


class Pair(NamedTuple):
    source: str  # English
    output: str  # a human translation
    lang: str  # the language `output` is in


def _read(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def multi30k(data: Path, lang: str, splits: Iterable[str]) -> list[Pair]:
    """Multi30K's (English, human translation) lines of the given splits."""
    raw = data / "multi30k" / "raw"
    return [Pair(en, ref, lang) for split in splits
            for en, ref in zip(_read(raw / f"{split}.en.gz"), _read(raw / f"{split}.{lang}.gz"))]


def commute(data: Path, lang: str) -> list[Pair]:
    """CoMMuTE's correct and incorrect translations, each against its English sentence."""
    folder = data / "commute" / f"en-{lang}"
    english = _read(folder / "src.en")
    return [Pair(en, ref, lang) for kind in ("correct", "incorrect")
            for en, ref in zip(english, _read(folder / f"{kind}.{lang}"))]


def reference_sets(data: Path, splits: Iterable[str] = ("val", "test_2016_flickr")) -> dict[str, list[Pair]]:
    """Name ("multi30k-de", "commute-ru", ...) -> pairs; only the sets present under `data`."""
    splits = tuple(splits)
    sets = {}
    for lang in MULTI30K_LANGUAGES:
        if all((data / "multi30k" / "raw" / f"{s}.{lang}.gz").exists() for s in splits):
            sets[f"multi30k-{lang}"] = multi30k(data, lang, splits)
    for lang in COMMUTE_LANGUAGES:
        if (data / "commute" / f"en-{lang}" / f"correct.{lang}").exists():
            sets[f"commute-{lang}"] = commute(data, lang)
    return sets


def other_language_pairs(sets: dict[str, list[Pair]], target: str) -> list[Pair]:
    """Human text in languages other than `target` (and English of the next line: an answer left
    untranslated, not a copy), each posed as a translation into `target`."""
    by_lang: dict[str, list[Pair]] = {}
    for pairs in sets.values():
        by_lang.setdefault(pairs[0].lang, []).extend(pairs)
    english = [p.source for p in next(iter(sets.values()))]
    by_lang["en"] = [Pair(a, b, "en") for a, b in zip(english, english[1:]) if a != b]
    return [Pair(p.source, p.output, lang) for lang, pairs in sorted(by_lang.items()) if lang != target
            for p in pairs[:OTHER_PER_LANGUAGE]]


Check = Callable[[str, str, str], object]


def reasons(check: Check, pairs: list[Pair], target: str) -> tuple[dict[str, Counter], float]:
    """Rejection reasons (None = accepted) of `pairs` as translations into `target`, per language the
    pairs are in, and seconds per check."""
    by_lang: dict[str, Counter] = {}
    start = time.perf_counter()
    for p in pairs:
        by_lang.setdefault(p.lang, Counter())[check(p.source, p.output, target).reason] += 1
    return by_lang, (time.perf_counter() - start) / len(pairs)


def true_rejection(by_lang: dict[str, Counter]) -> str:
    """Share of other-language text rejected (any reason), pooled, and the language least rejected."""
    def share(counts: Counter) -> float:
        return 100 * (1 - counts[None] / sum(counts.values()))

    pooled = share(sum(by_lang.values(), Counter()))
    weakest = min(by_lang, key=lambda lang: share(by_lang[lang]))
    return f"{pooled:.2f} (least: {weakest} {share(by_lang[weakest]):.1f})"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def detector_memory() -> dict[str, float]:
    """MiB of RSS each detector's model adds when it first loads (both load lazily)."""
    from transforms import translation_checks as now

    before = _rss_mib()
    now._langdetect("Ein Hund läuft über eine Wiese.")
    middle = _rss_mib()
    now._fasttext("Ein Hund läuft über eine Wiese.")
    return {"langdetect profiles": middle - before, "fastText lid.176.ftz": _rss_mib() - middle}


def pct(n: int, total: int) -> str:
    return f"{100 * n / total:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="also Multi30K train (29,000 lines per language)")
    parser.add_argument("--out", type=Path, help="also write the output here")
    args = parser.parse_args()
    memory = detector_memory()

    before = baseline_checks()
    from transforms import translation_checks as now

    splits = ("val", "test_2016_flickr", *(("train",) if args.train else ()))
    sets = reference_sets(SHARED_DATA, splits)
    if not sets:
        sys.exit(f"no references under {SHARED_DATA} (set FLORENZ_SHARED_DATA)")
    methods = {"before (v1)": before.check_translation, f"now (v{now.CHECKS_VERSION})": now.check_translation}
    out = [f"$ .venv/bin/python benchmarks/language_id_calibration.py{' --train' if args.train else ''}   "
           f"(Python {platform.python_version()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})",
           f"Multi30K splits: {', '.join(splits)}; CoMMuTE: correct + incorrect; other-language texts: up to "
           f"{OTHER_PER_LANGUAGE} per language (+ English of another line), any rejection counts.",
           "", "| references | target | n | checks | false wrong_language % | false wrong_script % | "
           "other rejections % | true rejection of other-language text % | µs/check (refs) | µs/check (other) |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    costs: dict[str, list[float]] = {name: [] for name in methods}
    on_others: dict[tuple[str, str], tuple[dict[str, Counter], float]] = {}  # (method, target): once per target
    for name, pairs in sets.items():
        target = pairs[0].lang
        for method, check in methods.items():
            by_lang, seconds = reasons(check, pairs, target)
            got = by_lang[target]
            if (method, target) not in on_others:
                on_others[method, target] = reasons(check, other_language_pairs(sets, target), target)
            rejected_other, other_seconds = on_others[method, target]
            costs[method] += [seconds] * len(pairs)
            other = len(pairs) - got[None] - got[now.WRONG_LANGUAGE] - got[now.WRONG_SCRIPT]
            out.append(f"| {name} | {target} | {len(pairs):,} | {method} | {pct(got[now.WRONG_LANGUAGE], len(pairs))} | "
                       f"{pct(got[now.WRONG_SCRIPT], len(pairs))} | {pct(other, len(pairs))} | "
                       f"{true_rejection(rejected_other)} | {seconds * 1e6:,.0f} | {other_seconds * 1e6:,.0f} |")
    out += ["", "Mean cost of one check on the references: " + "; ".join(
        f"{m} {1e6 * sum(c) / len(c):,.0f} µs" for m, c in costs.items()),
            "RSS added when each detector's model loads: " + "; ".join(f"{k} {v:.1f} MiB" for k, v in memory.items())]
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
