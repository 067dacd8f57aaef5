"""A batch's answers laid out so that multi-model-server 1.1.11 can always read them.

A worker hands a batch's answers to MMS's Java frontend as one frame
(mms.protocol.otf_message_handler.create_predict_response): a code and a message, then
per request its id, content type, HTTP status, reason phrase, headers and body, each
field after its length. The frontend tries to decode the frame each time a socket read
adds bytes (ModelResponseDecoder) and waits for more wherever a length says that bytes
are missing, except in two places:

- the header map (CodecUtils.readMap): the handler sets no response headers, so the map
  is empty (handler.py);
- the 4-byte HTTP status: it is read unchecked. A read that ends inside it (or just
  before it) throws, MMS closes the connection, and the worker process dies and is
  started again, which takes about a second. nginx's guard retries those requests, so
  no client sees an error; ``dogbreed_worker_restarts_total`` counts each death.
  Measured before this padding (2026-12-05, two models, 6 clients, one bad image in
  six): 16 worker deaths in 2,880 invocations; after it, none (docs/hardening.md).

Netty sizes each read from a table of multiples of 16 bytes (its
AdaptiveRecvByteBufAllocator), and a frame begins a fresh read because the worker
sends nothing else on that socket, so reads end at multiples of 16 bytes from the
frame's start. A status field at offset ``o`` is cut when a multiple of 16 lies in
[o, o + 3]: ``o % 16`` in {0, 13, 14, 15}. ``padded`` appends 1 to 4 spaces to the
body before such a status (whitespace after a JSON value changes nothing), which moves
the status to ``o % 16 == 1``. The first status has nothing before it to pad, and
needs nothing: it starts 70 bytes into the frame (MMS's request ids are 36-character
UUIDs), 6 bytes past a multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass

# Service.predict's message in every frame of answers the handler returned.
SUCCESS_MESSAGE = b"Prediction success"
READ_ALIGNMENT = 16                 # netty's read sizes are multiples of this
CUT_RESIDUES = frozenset({0, 13, 14, 15})
INT = 4                             # every length and the status: a 4-byte int


@dataclass(frozen=True)
class Record:
    """What MMS writes for one request besides its body (from the worker's context)."""

    request_id: str
    phrase: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def content_type(self) -> str:
        """MMS writes the content-type header a second time, in a field of its own."""
        return dict(self.headers).get("content-type") or ""

    def size_before_status(self) -> int:
        return INT + len(self.request_id.encode()) + INT + len(self.content_type.encode())

    def size_after_status(self, body: str) -> int:
        headers = INT + sum(2 * INT + len(k.encode()) + len(v.encode())
                            for k, v in self.headers)
        return (INT + INT + len(self.phrase.encode()) + headers
                + INT + len(body.encode()))


def status_offsets(records: list[Record], bodies: list[str]) -> list[int]:
    """Where each request's status starts in the frame (for the tests and ``padded``)."""
    offsets, at = [], 2 * INT + len(SUCCESS_MESSAGE)
    for record, body in zip(records, bodies, strict=True):
        at += record.size_before_status()
        offsets.append(at)
        at += record.size_after_status(body)
    return offsets


def padded(records: list[Record], bodies: list[str]) -> list[str]:
    """``bodies``, each followed by the spaces that keep the next status out of a cut."""
    bodies = list(bodies)
    at = 2 * INT + len(SUCCESS_MESSAGE)
    for i, record in enumerate(records):
        at += record.size_before_status()
        if i and at % READ_ALIGNMENT in CUT_RESIDUES:
            spaces = (1 - at) % READ_ALIGNMENT
            bodies[i - 1] += " " * spaces
            at += spaces
        at += record.size_after_status(bodies[i])
    return bodies


def records_of(context, count: int) -> list[Record]:
    """The records MMS will write for the first ``count`` requests of ``context`` (an
    mms.context.Context), read through the accessors MMS itself uses."""
    records = []
    for idx in range(count):
        _code, phrase = context.get_response_status(idx)
        headers = context.get_response_headers(idx) or {}
        records.append(Record(str(context.get_request_id(idx)), phrase or "",
                              tuple(headers.items())))
    return records
