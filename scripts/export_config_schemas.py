"""Write the JSON Schema files editors validate config YAML against, generated from the config
models themselves (schemas/contract.py), so they cannot drift from what loading accepts.

    .venv/bin/python scripts/export_config_schemas.py          # rewrite schemas/*.schema.json
    .venv/bin/python scripts/export_config_schemas.py --check  # exit 1 if a committed file is stale

A YAML file names its schema for editors (VS Code's YAML extension, any yaml-language-server) with a
first line like `# yaml-language-server: $schema=../schemas/run_config.schema.json`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.contract import config_json_schema  # noqa: E402

# schema file -> (module, config class, title)
SCHEMAS = {
    "schemas/run_config.schema.json": ("schemas.config", "RunConfig", "Florenz data engine run config"),
    "schemas/train_config.schema.json": ("model.train_config", "TrainConfig", "Florenz training config"),
}


def rendered() -> dict[str, str]:
    """Each schema file's expected text."""
    out = {}
    for path, (module, name, title) in SCHEMAS.items():
        schema = config_json_schema(getattr(importlib.import_module(module), name), title)
        out[path] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1), write nothing")
    args = parser.parse_args()
    texts = rendered()
    stale = [path for path, text in texts.items()
             if not (REPO / path).exists() or (REPO / path).read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python scripts/export_config_schemas.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        (REPO / path).write_text(texts[path], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
