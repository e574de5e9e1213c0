"""What a constructed pipeline would submit, for the dry run: the size of its graph (Dataflow refuses
a job graph over 10 MB, and everything a step holds, pickled, is in it), its largest single step,
and which steps carry resource hints (on Dataflow: which run on GPU workers)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import TestOptions
from apache_beam.portability.api import beam_runner_api_pb2

DATAFLOW_GRAPH_LIMIT = 10 << 20


def submitted_proto(p: beam.Pipeline) -> beam_runner_api_pb2.Pipeline:
    """The pipeline proto the runner would submit. For Dataflow, Beam's own runner builds the job in
    its dry-run mode (TestOptions.dry_run, which the caller sets), applying its overrides, combiner
    packing and environment merging, and returns before staging or submitting anything."""
    if type(p.runner).__name__ == "DataflowRunner":
        if not p.options.view_as(TestOptions).dry_run:
            raise ValueError("submitted_proto needs TestOptions.dry_run: without it, running would submit the job")
        return p.run().job.proto_pipeline
    return p.to_runner_api()


def hinted_transforms(proto: beam_runner_api_pb2.Pipeline) -> dict[str, dict[str, str]]:
    """{transform: {hint name: value}} for the outermost transforms whose environment carries
    resource hints (the transforms inside them inherit the same environment)."""
    transforms = proto.components.transforms
    environments = proto.components.environments

    def hints(transform_id: str) -> dict[str, str]:
        env = environments.get(transforms[transform_id].environment_id)
        return {} if env is None else {_hint_name(urn): value.decode() for urn, value in env.resource_hints.items()}

    hinted: dict[str, dict[str, str]] = {}

    def visit(transform_id: str) -> None:
        found = hints(transform_id)
        if found:
            hinted[transforms[transform_id].unique_name] = found
            return
        for sub in transforms[transform_id].subtransforms:
            visit(sub)

    for root in proto.root_transform_ids:
        visit(root)
    return hinted


def hinted_steps(proto: beam_runner_api_pb2.Pipeline) -> list[str]:
    """The executed (leaf) transforms whose environment carries resource hints: what a runner that
    right-fits, like Dataflow, puts on the hinted workers."""
    transforms, environments = proto.components.transforms, proto.components.environments
    return sorted(t.unique_name for t in transforms.values() if not t.subtransforms
                  and t.environment_id in environments and environments[t.environment_id].resource_hints)


def _hint_name(urn: str) -> str:
    """beam:resources:accelerator:v1 -> accelerator."""
    parts = urn.split(":")
    return parts[2] if len(parts) == 4 and parts[:2] == ["beam", "resources"] else urn


def describe(proto: beam_runner_api_pb2.Pipeline) -> dict:
    """Graph size, its largest step payload (a DoFn and all it holds, pickled) and resource hints."""
    payloads = {t.unique_name: len(t.spec.payload) for t in proto.components.transforms.values()}
    largest = max(payloads, key=payloads.get)
    return {"transforms": len(proto.components.transforms), "graph_bytes": proto.ByteSize(),
            "graph_limit_bytes": DATAFLOW_GRAPH_LIMIT, "largest_step": largest,
            "largest_step_bytes": payloads[largest], "resource_hints": hinted_transforms(proto),
            "hinted_steps": hinted_steps(proto)}
