"""What the CLI tells the user after a run: the build's counts, the translation requests that failed
(with their causes and what to do), and why a build stopped before writing shards."""
from __future__ import annotations

import json
import sys

from transforms.translate import FAILURE_EXAMPLES

# What to look at first, per failure reason (the translator's failed_<reason> counters).
_FAILURE_HINTS = {
    "failed_http_401": "the server wants an API key, or another one: set translator.api_key_env to the name of "
                       "the environment variable holding it",
    "failed_http_403": "the server refused the API key: check the variable translator.api_key_env names",
    "failed_http_404": "no such model or path on the server: check translator.model and the endpoint (…/v1)",
    "failed_http_400": "the server refused the request: check translator.model and max_tokens_cap against "
                       "the server's limits (the example says which)",
    "failed_http_429": "the server is overloaded or rate-limited: lower translator.concurrency",
    "failed_timeout": "no answer within translator.request_timeout_s: raise it, or lower translator.concurrency",
    "failed_connection_error": "the server could not be reached: is it running at the endpoint?",
    "failed_bad_response": "the endpoint does not answer like an OpenAI-compatible server (vLLM): check the URL",
}


def _failure_lines(failed: dict, examples: dict) -> list[str]:
    """Per failure reason: its count, one example of its cause, and a hint where one is known."""
    lines = []
    for reason, n in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason}: {n}" + (f", e.g. {examples[reason]}" if examples.get(reason) else ""))
        hint = _FAILURE_HINTS.get(reason) or (
            "the server failed: see its log" if reason.startswith("failed_http_5") else None)
        if hint:
            lines.append(f"    ({hint})")
    return lines


def report_failures(summary: dict, command: str, consequence: str = "", model: str = "the translator",
                    sent: str = "translated", items: str = "texts") -> bool:
    """Print the requests that failed (translations; the recaption stage's: `model`, `sent`, `items`),
    with their causes, to stderr; whether there were any."""
    failed = {k: v for k, v in summary.items() if k.startswith("failed_") and isinstance(v, int) and v}
    if not failed:
        return False
    total = sum(failed.values())
    print(f"{model} failed on {total} of the {summary.get(sent, total)} {items} it was sent:", file=sys.stderr)
    for line in _failure_lines(failed, summary.get(FAILURE_EXAMPLES, {})):
        print(line, file=sys.stderr)
    print(f"They are not stored{'; ' + consequence if consequence else ''}; once the cause is fixed, "
          f"`florenz-data {command} CONFIG` sends only them again.", file=sys.stderr)
    return True


def print_build_summary(stats: dict) -> None:
    """The build's accounting and coverage, from its stats.json, on stdout."""
    images, captions = stats["images"], stats["captions"]
    print(f"images   read {images['read']:>8}  written {images['written']:>8}  rejected {images['rejected_total']:>8}")
    print(f"captions read {captions['read']:>8}  written {captions['written']:>8}  rejected {captions['rejected_total']:>8}")
    for split, s in stats["splits"].items():
        cells = "  ".join(f"{k}={v}" for k, v in s["annotations"].items())
        print(f"{split:<6} {s['images']} images in {s['shards']} shards: {cells}")
        if s["missing_translation"]:
            print(f"{'':<6} missing_translation: {s['missing_translation']}")
    translation = stats.get("translation", {})  # failures and their causes: report_failures, on stderr
    print("translation:", json.dumps({k: v for k, v in translation.items() if k != FAILURE_EXAMPLES}))
    if "descriptions" in stats:  # images without an accepted description go without one, counted
        print("descriptions:", json.dumps(stats["descriptions"]))


def report_missing(missing: dict, texts: str, command: str) -> None:
    """Why a build stopped before writing shards: translations it needs that the translator failed on
    (with their causes), or that are not in the store."""
    per_language = ", ".join(f"{lang} {n}" for lang, n in missing["per_language"].items())
    per_reason = missing.get("per_reason", {})
    failed = {k: v for k, v in per_reason.items() if k.startswith("failed_")}
    if failed:  # the translator was asked and failed: say why, not "run the command you just ran"
        print(f"stopped before writing shards: the translator failed on {sum(failed.values())} of the "
              f"translations the plan needs ({per_language}):", file=sys.stderr)
        for line in _failure_lines(failed, missing.get("examples", {})):
            print(line, file=sys.stderr)
        print(f"Failed requests are not stored: once the cause is fixed, `florenz-data {command} CONFIG` "
              f"sends only these again (the texts are in {texts}); or build without them: "
              "--allow-missing-translations.", file=sys.stderr)
    if per_reason.get("not_in_store", 0) or not failed:
        print(f"stopped before writing shards: {per_reason.get('not_in_store', missing['total'])} translations "
              f"the plan needs are not in the store ({per_language}); the texts are in {texts}.\n"
              "Translate only these with `florenz-data run CONFIG` (a translator section or --endpoint/--model), "
              "or build without them: --allow-missing-translations.", file=sys.stderr)
    if per_reason.get("stale_verdict", 0):
        print(f"{per_reason['stale_verdict']} of them are stored only as rejections by older checks, with no answer "
              "kept to judge again (stored before answers were kept): `florenz-data run CONFIG` asks for them again.",
              file=sys.stderr)
