"""Object stores before the first I/O: Beam's filesystem options for every command, and a quick check
that each s3:// bucket a command names can be reached.

Beam's S3 client retries a refused connection or missing credentials with exponential back-off for
many minutes per call, so an unreachable endpoint or an unconfigured machine would look like a hang;
the check turns either into one line naming the option to set, within seconds.
"""
from __future__ import annotations

from typing import Iterable, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from schemas.config import RunConfig
from schemas.errors import ConfigError

S3_FLAGS = "--s3_endpoint_url, --s3_access_key_id, --s3_secret_access_key, --s3_region_name"


def set_filesystem_options(beam_args: list[str]) -> None:
    """Give Beam's FileSystems the command's options (S3 endpoint and keys, GCS project...): object
    stores take their settings from them when first used."""
    FileSystems.set_options(PipelineOptions(beam_args))


def unknown_args(beam_args: list[str]) -> list[str]:
    """The arguments no Beam option takes (for commands that run no pipeline, where nothing else
    would read them: a typo or a stray word must not pass silently)."""
    unknown: list[str] = []

    def collect(parser) -> None:  # Beam's own parser, every option class registered, before it parses
        unknown.extend(parser.parse_known_args(beam_args)[1])

    PipelineOptions(beam_args).get_all_options(add_extra_args_fn=collect, retain_unknown_options=True)
    return unknown


def config_paths(config: RunConfig) -> list[str]:
    """Every path a run reads or writes: its output, its store, its sources' files, the plan's eval-key
    list and the translator's weights where they are in a bucket."""
    sources = [value for spec in config.sources for value in vars(spec).values()
               if isinstance(value, str) and "://" in value]
    weights = config.translator.model if config.translator is not None else None
    return [config.output, config.store.path, *sources, config.plan.eval_keys_file,
            weights if weights and "://" in weights else None]


def check_s3(paths: Iterable[Optional[str]], options: PipelineOptions) -> None:
    """Refuse, in one line, s3:// paths whose bucket cannot be reached with the S3 options given."""
    buckets = sorted({p[len("s3://"):].split("/", 1)[0] for p in paths if p and p.startswith("s3://")})
    if not buckets:
        return
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise ConfigError("s3", "s3:// paths need boto3: install apache-beam[aws] "
                                "(pip install 'florenz-data[aws]')") from None
    s3 = options.view_as(S3Options)
    session = boto3.session.Session(aws_access_key_id=s3.s3_access_key_id,
                                    aws_secret_access_key=s3.s3_secret_access_key,
                                    aws_session_token=s3.s3_session_token, region_name=s3.s3_region_name)
    where = s3.s3_endpoint_url or "AWS S3"
    client = session.client("s3", endpoint_url=s3.s3_endpoint_url, use_ssl=not s3.s3_disable_ssl,
                            verify=s3.s3_verify, api_version=s3.s3_api_version,
                            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise ConfigError("--s3_access_key_id", f"s3://{bucket}: no S3 credentials; pass {S3_FLAGS} "
                                                    "(an S3-compatible server), or configure AWS credentials "
                                                    "(environment, ~/.aws, instance role)") from None
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise ConfigError("s3", f"s3://{bucket}: no such bucket at {where}") from None
            if status != 403:  # 403: a key may read objects without listing the bucket; let the run try
                raise ConfigError("s3", f"s3://{bucket} at {where}: {error}") from None
        except BotoCoreError as error:  # unreachable endpoint, bad URL, timeout
            raise ConfigError("--s3_endpoint_url", f"s3://{bucket}: cannot reach {where}: {error}; check "
                                                   f"{S3_FLAGS}") from None
