"""frames.padded against the wire format of multi-model-server 1.1.11, in milliseconds.

``encode`` writes a batch's answers byte for byte as the worker does
(mms.protocol.otf_message_handler.create_predict_response), and ``decodes`` reads a
frame cut short as the frontend does (ModelResponseDecoder with CodecUtils): it waits
where a length says bytes are missing, and fails where the frontend reads the 4-byte
status unchecked. The container test of the same fix is in test_serve_multi_model.py
(mixed batches of good and bad images, no worker restarted).
"""

from __future__ import annotations

import json
import random
import struct
import uuid

from dogbreed_serve import frames
from dogbreed_serve.frames import Record

PHRASES = ["", "the body is not a JPEG or PNG image (unrecognised file signature)",
           "top_k must be at least 1", "the image could not be decoded",
           "inference failed"]


def encode(records: list[Record], bodies: list[str]) -> bytes:
    def sized(data: bytes) -> bytes:
        return struct.pack("!i", len(data)) + data

    frame = struct.pack("!i", 200) + sized(frames.SUCCESS_MESSAGE)
    for record, body in zip(records, bodies, strict=True):
        frame += sized(record.request_id.encode()) + sized(record.content_type.encode())
        frame += struct.pack("!i", 400 if record.phrase else 200)
        frame += sized(record.phrase.encode())
        frame += struct.pack("!i", len(record.headers))
        for key, value in record.headers:
            frame += sized(key.encode()) + sized(value.encode())
        frame += sized(body.encode())
    return frame + struct.pack("!i", -1)


class Cut(Exception):
    """The frontend's decoder threw: MMS closes the worker's connection."""


def decodes(frame: bytes) -> bool:
    """True when the frame is whole, False when the decoder waits for more bytes;
    raises Cut where ModelResponseDecoder reads past what has arrived."""
    at = 0

    def unchecked_int() -> int:
        nonlocal at
        if at + 4 > len(frame):
            raise Cut(f"status at {at} cut at {len(frame)}")
        at += 4
        return struct.unpack("!i", frame[at - 4:at])[0]

    def length() -> int | None:  # CodecUtils.readLength: None for BUFFER_UNDER_RUN
        nonlocal at
        if at + 4 > len(frame):
            return None
        n = struct.unpack("!i", frame[at:at + 4])[0]
        at += 4
        return None if n > len(frame) - at else n

    def skip(n: int) -> None:
        nonlocal at
        at += n

    if len(frame) < 9:
        return False
    unchecked_int()  # the frame's code, read once 9 bytes are there
    if (n := length()) is None:
        return False
    skip(n)
    while (n := length()) != -1:
        if n is None:
            return False
        skip(n)  # request id
        if (n := length()) is None:
            return False
        skip(n)  # content type
        unchecked_int()  # the request's HTTP status
        for _ in ("phrase", "headers", "body"):
            if (n := length()) is None:
                return False
            if _ == "headers":
                assert n == 0, "the handler sets no headers (CodecUtils.readMap)"
            else:
                skip(n)
    return True


def batches(rng: random.Random, count: int):
    """Batches as the handler answers them: MMS's UUID request ids, some refusals."""
    for _ in range(count):
        size = rng.randint(1, 8)
        records = [Record(str(uuid.UUID(int=rng.getrandbits(128))),
                          phrase=rng.choice(PHRASES) if rng.random() < 0.3 else "")
                   for _ in range(size)]
        bodies = [json.dumps({"predictions": [
            {"label": "x" * rng.randint(1, 40), "probability": rng.random()}
            for _ in range(rng.randint(1, 5))]}) if not r.phrase else
            json.dumps({"error": r.phrase, "status": 400}) for r in records]
        yield records, bodies


def cut_points(frame: bytes) -> list[int]:
    """Where netty's reads can end: multiples of 16 bytes from the frame's start."""
    return list(range(frames.READ_ALIGNMENT, len(frame), frames.READ_ALIGNMENT))


def test_unpadded_batches_are_cut_where_the_frontend_reads_the_status_unchecked():
    rng = random.Random(5)
    at_risk = sum(1 for records, bodies in batches(rng, 500)
                  if any(_throws(encode(records, bodies)[:end])
                         for end in cut_points(encode(records, bodies))))
    assert at_risk > 150  # the fault the padding removes: 307 of these 500 batches


def test_padded_batches_decode_wherever_a_read_ends():
    rng = random.Random(5)
    for records, bodies in batches(rng, 2000):
        frame = encode(records, frames.padded(records, bodies))
        for end in cut_points(frame):
            assert decodes(frame[:end]) is False, (records, end)
        assert decodes(frame) is True


def test_padding_is_at_most_four_spaces_after_the_json():
    rng = random.Random(7)
    for records, bodies in batches(rng, 500):
        for before, after in zip(bodies, frames.padded(records, bodies), strict=True):
            assert after.rstrip(" ") == before and len(after) - len(before) <= 4
            assert json.loads(after) == json.loads(before)


def test_offsets_follow_headers_content_types_and_multibyte_text():
    records = [Record("a" * 36, headers=(("content-type", "application/json"),)),
               Record("b" * 36, phrase="é")]
    frame = encode(records, ['{"x": "ü"}', "{}"])
    assert [struct.unpack("!i", frame[at:at + 4])[0] for at in frames.status_offsets(
        records, ['{"x": "ü"}', "{}"])] == [200, 400]


def _throws(frame: bytes) -> bool:
    try:
        decodes(frame)
    except Cut:
        return True
    return False
