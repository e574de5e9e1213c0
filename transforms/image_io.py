"""Reading the image bytes behind ImageRefs: one image (validation of a COCO or Parquet path), or a
whole shard's at once (the shard writer), each file's needed bytes fetched once.

Every ref is a byte range of a file (a plain tar's member, a staged image, a whole image file). For a
shard, refs are grouped by file; byte ranges of one file are sorted and neighbours at most
MERGE_GAP bytes apart (what lies between two images of a tar: headers and small caption members;
nothing, between two images staged one after the other) are merged into one request of at most
MAX_REQUEST bytes; whole files are one read each. Requests run on a bounded thread pool with at most
2 x threads in flight, so memory holds at most that many requests' bytes.

A ref whose bytes are gone (deleted file or object) fails with FileNotFoundError, one whose file
changed so that the bytes cannot be where they were (shorter, no longer a regular file) with
ImageChanged; any other error is raised (a failed request the runner retries).
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterator, Optional, Sequence, Union

from schemas.records import ImageRef
from transforms.range_reader import NotARegularFile, RangeReader

MERGE_GAP = 4096  # a tar's headers + a caption member between two images; more would fetch unused bytes
MAX_REQUEST = 8 << 20  # one merged request's bytes at most
SPOOL_MEMORY = 64 << 20  # a shard's fetched images stay in memory up to this, then go to local disk


class ImageChanged(OSError):
    """The image's file changed so that the referenced bytes are no longer there."""


Fetched = Union[bytes, FileNotFoundError, ImageChanged]


@dataclasses.dataclass
class _Request:
    """One read: [start, start + length) of a file (length -1: to its end); serves each member
    (index into the fetched refs, ref)."""

    uri: str
    start: int
    length: int
    members: list[tuple[int, ImageRef]]

    @property
    def end(self) -> int:
        return self.start + self.length


def plan_requests(refs: Sequence[ImageRef]) -> list[_Request]:
    """Read requests for `refs`: ranges of a file sorted and merged where adjacent, one request per
    whole file."""
    ranges: dict[str, list[tuple[int, ImageRef]]] = defaultdict(list)
    for index, ref in enumerate(refs):
        if not ref.addressable:
            raise ValueError(f"{ref.origin}: an image no byte range holds reached a reader unstaged")
        ranges[ref.uri].append((index, ref))
    requests: list[_Request] = []
    for uri, members in sorted(ranges.items()):
        current: Optional[_Request] = None
        for index, ref in sorted(members, key=lambda m: (m[1].offset, m[1].length)):
            if ref.length < 0:  # to the end of the file: a request of its own
                requests.append(_Request(uri, ref.offset, -1, [(index, ref)]))
                continue
            end = ref.offset + ref.length
            if current is not None and ref.offset - current.end <= MERGE_GAP \
                    and max(end, current.end) - current.start <= MAX_REQUEST:
                current.length = max(end, current.end) - current.start
                current.members.append((index, ref))
            else:
                current = _Request(uri, ref.offset, ref.length, [(index, ref)])
                requests.append(current)
    return requests


class ImageFetcher:
    """Fetches images for one DoFn instance: one RangeReader (so one client per object store) and a
    pool of `threads` readers, started on the first fetch that has more than one request."""

    def __init__(self, threads: int = 8):
        self.reader = RangeReader()
        self.threads = threads
        self._pool: Optional[ThreadPoolExecutor] = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def read(self, ref: ImageRef) -> bytes:
        """One image's bytes; raises FileNotFoundError, ImageChanged, or the read's own error."""
        ((_, got),) = list(self.fetch([ref]))
        if isinstance(got, Exception):
            raise got
        return got

    def fetch(self, refs: Sequence[ImageRef]) -> Iterator[tuple[int, Fetched]]:
        """(index into refs, bytes or why they are gone) for every ref, in completion order."""
        requests = plan_requests(refs)
        if len(requests) <= 1:
            for request in requests:
                yield from self._run(request)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="image-read")
        pending: set[Future] = set()
        for request in requests:
            pending.add(self._pool.submit(self._run, request))
            if len(pending) >= 2 * self.threads:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()

    def _run(self, request: _Request) -> list[tuple[int, Fetched]]:
        try:
            data = self.reader.read(request.uri, request.start, request.length)
        except FileNotFoundError as e:
            return [(index, e) for index, _ in request.members]
        except NotARegularFile as e:
            return [(index, ImageChanged(str(e))) for index, _ in request.members]
        out: list[tuple[int, Fetched]] = []
        for index, ref in request.members:
            if ref.length < 0:
                out.append((index, data))
                continue
            piece = data[ref.offset - request.start:ref.offset - request.start + ref.length]
            out.append((index, piece if len(piece) == ref.length else _shorter(ref, len(piece))))
        return out


def _shorter(ref: ImageRef, got: int) -> ImageChanged:
    """A range its file no longer holds whole; a staged copy is named by its origin (its file and
    offset differ between runs, and the message goes to rejects/)."""
    where = f"{ref.origin} (its staged copy)" if ref.origin else f"{ref.uri} at offset {ref.offset}"
    return ImageChanged(f"{where}: {got} of {ref.length} bytes (the file is shorter now)")


@contextlib.contextmanager
def spooled(fetcher: ImageFetcher, refs: Sequence[ImageRef]) -> Iterator[Callable[[int], Fetched]]:
    """Fetch every ref (in whatever order the reads finish) into a spool that spills to local disk
    past SPOOL_MEMORY; yields get(index) -> the bytes of refs[index], or why they are gone. The
    shard writer needs its images in position order, the reads are cheapest in file order."""
    places: dict[int, Union[tuple[int, int], FileNotFoundError, ImageChanged]] = {}
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
        for index, got in fetcher.fetch(refs):
            if isinstance(got, Exception):
                places[index] = got
            else:
                places[index] = (spool.tell(), len(got))
                spool.write(got)

        def get(index: int) -> Fetched:
            place = places[index]
            if isinstance(place, Exception):
                return place
            spool.seek(place[0])
            return spool.read(place[1])

        yield get
