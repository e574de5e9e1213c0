"""What a Dataflow job that serves a model with its own vLLM servers (the translator, the recaption
VLM) needs in order to start, checked where the pipeline is built (so a dry run checks it too): a
wrong job then fails on the launcher in a second, instead of on GPU workers after minutes of start-up.

Worker disk (`--disk_size_gb`; with Dataflow Shuffle, batch workers get 25 GB by default, and the
shuffle itself lives in the service, not on the disk):
    container  ~34 GB  vLLM's serving image unpacked (~24 GB) + its compressed layers, which the
                       container runtime keeps (~10 GB); assumed: check `docker image inspect`
    weights    ~19 GB  gemma-2-9b-it in bf16: 9.24 B parameters x 2 bytes = 18.5 GB (copied from
                       a bucket once per VM, or baked into the image: about the same total); the
                       recaption VLM, llama3-llava-next-8b in bf16, ~8.4 B parameters: ~17 GB
    system     ~10 GB  OS, logs, Beam's staging and temp files, vLLM's compile cache
    total      ~63 GB  -> MIN_DISK_GB = 64; 100 GB leaves room for a larger image or model
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions

from schemas.config import ServedModel
from schemas.errors import ConfigError

MIN_DISK_GB = 64
WORKER_ACCELERATOR = "worker_accelerator"


def check_dataflow_served(p: beam.Pipeline, served: ServedModel) -> None:
    """Refuse a Dataflow job whose managed vLLM server (the translator's or the recaption VLM's)
    could not start: no container with vLLM, a disk too small for the image and the weights, or no
    GPU for the step that asks the model (or GPUs asked for twice: right fitting must not be combined
    with the worker_accelerator service option). Messages name `served`'s config section."""
    if type(p.runner).__name__ != "DataflowRunner" or served.managed is None:
        return
    section, step = served.SECTION, f"the {served.SECTION} step"
    worker = p.options.view_as(WorkerOptions)
    if not worker.sdk_container_image:
        raise ConfigError("--sdk_container_image", f"the managed vLLM server of {section} runs in the worker "
                                                   "container; Beam's default image has no vLLM: build "
                                                   "docker/Dockerfile.dataflow and give its tag")
    if (worker.disk_size_gb or 0) < MIN_DISK_GB:
        raise ConfigError("--disk_size_gb", f"is {worker.disk_size_gb or 'unset (25 GB on batch workers)'}; a GPU "
                                            f"worker holds vLLM's image (~34 GB) and {section}'s model (~19 GB for "
                                            f"a 9B model in bf16): give at least {MIN_DISK_GB} (100 recommended)")
    services = p.options.view_as(GoogleCloudOptions).dataflow_service_options or []
    whole_job = any(option.startswith(WORKER_ACCELERATOR) for option in services)
    if served.accelerator and whole_job:
        raise ConfigError("--dataflow_service_options", f"{WORKER_ACCELERATOR} puts a GPU on every worker, and "
                                                        f"{section}.accelerator already asks one for {step} "
                                                        "(Dataflow refuses both): drop the service option")
    if not served.accelerator and not whole_job:
        raise ConfigError(f"{section}.accelerator", f"the managed vLLM server needs a GPU: give {step} one, e.g. "
                                                    "'type:nvidia-l4;count:1;machine_type:g2-standard-8;"
                                                    "install-nvidia-driver' (or put GPUs on every worker with "
                                                    f"--dataflow_service_options {WORKER_ACCELERATOR}=...)")
