"""CLI behaviours users rely on (harness: tests/hostile.py), each a real `florenz-data` run in its own
process, translating against tests/fault_server.py (the translator suites' stand-in for vLLM) on real
Multi30K captions: `translate` into an output folder that holds a finished build leaves that build
complete and verifiable, and `translate` and `run` on a config without a translator stop before
touching anything, naming the config field, with exit 2 (README: "Using it")."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.layout import SUCCESS
from tests.hostile import expect, run_cli
from tests.test_hostile_translator import SMALL_RUN, config_for, fault_server, translation_stats
from tests.test_translate_faults import make_corpus


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A finished `run` (translate + build) of 4 images with real captions: (its folder, its config,
    the fault server's pairs)."""
    tmp = tmp_path_factory.mktemp("finished")
    pairs, captions = make_corpus(tmp, 4)
    with fault_server(tmp, pairs) as url:
        config = config_for(tmp, captions, {"endpoints": [url], **SMALL_RUN})
        done = run_cli("run", config)
    assert done.returncode == 0, done.output[-3000:]
    return tmp, config, pairs


def test_translate_leaves_a_finished_build_in_its_output_complete(finished):
    tmp, config, pairs = finished
    marker = (tmp / "out" / SUCCESS).read_bytes()
    with fault_server(tmp, pairs) as url:
        done = run_cli("translate", config, "--endpoint", url)
    expect(done, "handled", "data loss")
    summary = translation_stats(tmp)
    assert summary["requested"] == 16 and summary.get("sent", 0) == 0  # the store had them all
    assert (tmp / "out" / SUCCESS).read_bytes() == marker
    verified = run_cli("verify", tmp / "out")
    assert verified.returncode == 0 and verified.stdout.rstrip().endswith("OK"), verified.output[-3000:]


@pytest.mark.parametrize("command", ["translate", "run"])
def test_a_command_that_translates_refuses_a_config_without_a_translator(finished, command):
    tmp, config, _ = finished
    raw = yaml.safe_load(config.read_text())
    raw.pop("translator")
    raw["store"]["fingerprint"] = "without-translator"
    bare = tmp / f"no-translator-{command}.yaml"
    bare.write_text(yaml.safe_dump(raw))
    marker = (tmp / "out" / SUCCESS).read_bytes()
    done = run_cli(command, bare)
    expect(done, "refused", "failures without their cause",
           mentions=[f"config error: translator: `{command}` sends captions", "florenz-data build CONFIG"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (tmp / "out" / SUCCESS).read_bytes() == marker  # refused before the output was touched
