"""The MJPEG-over-HTTP body parser (untrusted bytes from the network): what cameras send, a corpus
of malformed bodies refused with a SourceError, and random bodies that never raise anything else.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.errors import SourceError
from appliance.inference.sources.mjpeg_http import (
    MAX_HEADER_LINES,
    MAX_PART,
    MultipartReader,
    _boundary,
)

URI = "http://cam/video"
JPEG_A = b"\xff\xd8jpeg-a\r\n--not-it\r\n\xff\xd9"  # a CRLF and dashes inside the data
JPEG_B = b"\xff\xd8jpeg-b\xff\xd9"


def parts(body: bytes, boundary: bytes = b"frame") -> list[bytes]:
    reader = MultipartReader(io.BufferedReader(io.BytesIO(body)), boundary, URI)
    out = []
    while True:
        try:
            out.append(reader.next_part())
        except EOFError:
            return out


def test_parts_with_content_length() -> None:
    body = b"".join(
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(j), j)
        for j in (JPEG_A, JPEG_B)
    )
    assert parts(body) == [JPEG_A, JPEG_B]


def test_parts_without_length_end_at_the_next_boundary() -> None:
    body = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG_B + b"\r\n--frame\r\n"
    body += b"Content-Type: image/jpeg\r\n\r\n" + JPEG_B + b"\r\n--frame--\r\n"
    assert parts(body) == [JPEG_B, JPEG_B]


@pytest.mark.parametrize(
    ("header", "line"),
    [
        ("multipart/x-mixed-replace; boundary=frame", b"--frame"),
        ('multipart/x-mixed-replace;boundary="--frame"', b"--frame"),  # dashes declared too
        ("Multipart/X-Mixed-Replace; boundary=--frame", b"----frame"),  # and written twice
    ],
)
def test_boundary_dashes_as_cameras_write_them(header: str, line: bytes) -> None:
    boundary = _boundary(header)
    assert boundary == b"frame"
    body = line + b"\r\nContent-Length: %d\r\n\r\n" % len(JPEG_B) + JPEG_B + b"\r\n"
    assert parts(body, boundary) == [JPEG_B]


@pytest.mark.parametrize(
    "header", ["image/jpeg", "video/mp2t", "multipart/x-mixed-replace", "multipart/mixed; b=x", ""]
)
def test_other_content_types_are_not_mjpeg(header: str) -> None:
    assert _boundary(header) is None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"garbage\r\n" * (MAX_HEADER_LINES + 1), "no multipart boundary"),
        (b"--frame\r\nContent-Length: twelve\r\n\r\n", "bad part header"),
        (b"--frame\r\nContent-Length: 0\r\n\r\n", "not a camera frame"),
        (b"--frame\r\nContent-Length: -5\r\n\r\n", "not a camera frame"),
        (b"--frame\r\nContent-Length: %d\r\n\r\n" % (MAX_PART + 1), "not a camera frame"),
        (b"--frame\r\n" + b"X-Junk: 1\r\n" * (MAX_HEADER_LINES + 1), "header lines"),
    ],
    ids=["no-boundary", "bad-length", "zero", "negative", "huge", "endless-headers"],
)
def test_malformed_bodies_are_refused(body: bytes, error: str) -> None:
    with pytest.raises(SourceError, match=error) as err:
        parts(body)
    assert URI in str(err.value)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"--frame\r\n",
        b"--frame\r\nContent-Length: 100\r\n\r\nshort",
        b"--frame\r\n\r\nno closing boundary",
    ],
    ids=["empty", "boundary-only", "truncated", "unterminated"],
)
def test_a_body_that_ends_early_is_the_end_of_the_stream(body: bytes) -> None:
    assert parts(body) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [b"--frame\r\n", b"--frame--\r\n", b"Content-Length: 4\r\n", b"\r\n", b"--x\r\n"]
            ),
            st.binary(max_size=64),
        ),
        max_size=40,
    )
)
def test_random_bodies_give_parts_or_a_source_error(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    try:
        got = parts(body)
    except SourceError as exc:
        assert URI in str(exc)
    else:
        assert all(isinstance(p, bytes) and len(p) <= len(body) for p in got)
