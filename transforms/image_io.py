"""Reading image bytes behind an ImageRef through Beam's FileSystems (local paths, gs://, ...)."""
import os
import stat

from apache_beam.io.filesystems import FileSystems

from schemas.records import ImageRef


def read_image_bytes(ref: ImageRef) -> bytes:
    """The image's bytes; raises OSError (FileNotFoundError for a missing file) when unreadable.

    A local path must be a regular file: a FIFO or a device placed in an image folder would block
    or never end (sources confine paths to their root, but what lies inside the root is data)."""
    if ref.inline is not None:
        return ref.inline
    if "://" not in ref.uri:
        mode = os.stat(ref.uri).st_mode  # FileNotFoundError for a missing file
        if not stat.S_ISREG(mode):
            raise OSError(f"{ref.uri}: not a regular file")
    with FileSystems.open(ref.uri, compression_type="uncompressed") as f:
        if ref.offset:
            f.seek(ref.offset)
        data = f.read() if ref.length < 0 else f.read(ref.length)
    if ref.length >= 0 and len(data) != ref.length:
        raise OSError(f"{ref.uri}: expected {ref.length} bytes at offset {ref.offset}, got {len(data)}")
    return data
