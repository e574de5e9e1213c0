"""pyarrow schemas of everything the pipeline writes as Parquet."""
import pyarrow as pa

# One row per (English text, language, translator): the append-only translation store.
TRANSLATION_SCHEMA = pa.schema([
    pa.field("text_hash", pa.string(), nullable=False),
    pa.field("lang", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("source_text", pa.string(), nullable=False),
    pa.field("translation", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # accepted | rejected
    pa.field("reason", pa.string()),  # why rejected; null when accepted
    # Added later (parts written before lack them, transforms/translation_store.py reads them as null):
    pa.field("raw_output", pa.string()),  # the answer the verdict was judged from (transforms/store_verdicts.py)
    pa.field("checks_version", pa.int32()),  # translation_checks.CHECKS_VERSION of the verdict; null: unknown
])
ADDED_COLUMNS = ("raw_output", "checks_version")  # absent from parts written before they existed
STATUS_ACCEPTED = "accepted"
STATUS_REJECTED = "rejected"

# One row per image written to a shard.
MANIFEST_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),  # relative path, e.g. train/000003.tar
    pa.field("position", pa.int32(), nullable=False),  # index of the sample inside its shard
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("image_format", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("captions", pa.int32(), nullable=False),  # English captions accepted
    pa.field("annotations", pa.map_(pa.string(), pa.int32()), nullable=False),  # task-lang -> n
    pa.field("missing", pa.map_(pa.string(), pa.int32()), nullable=False),  # task-lang -> n
])
