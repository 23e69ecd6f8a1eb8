"""H.264 to BGR with Cisco's openh264 decoder (BSD-2-Clause), loaded through ctypes.

Debian ships it as ``libopenh264-7`` (2.3.1, 1.1 MiB, needs only the C++ runtime). The library
name is a literal in :func:`_load` so PyInstaller's ctypes scan bundles it into the frozen
runtime, as ``libyuv.py`` does for libyuv. openh264 decodes the Constrained Baseline profile
that IP cameras stream (and Main/High without interlacing); it is software only: Jetson's NVDEC
and Intel's VA-API/QSV decoders are not used here.

The C interface is a table of function pointers (``ISVCDecoderVtbl`` in ``codec_api.h``);
:class:`H264Decoder` calls ``Initialize`` with error concealment off (a broken frame is
reported, never smeared), ``DecodeFrameNoDelay`` once per access unit (Annex B), then turns the
I420 picture into BGR with libyuv (``I420ToRGB24``), numpy where libyuv is missing.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources import libyuv
from appliance.inference.sources.pixels import i420_to_bgr_numpy

LIBRARY = "libopenh264.so.7"
MAX_PIXELS = 8192 * 4352  # 8K and a little: more is not a camera (a BGR frame of 107 MB)
# Indices into ISVCDecoderVtbl and enum values, from codec_api.h / codec_app_def.h (2.3.1).
_INITIALIZE, _UNINITIALIZE, _DECODE_NO_DELAY, _FLUSH_FRAME, _SET_OPTION, _GET_OPTION = (
    0,
    1,
    3,
    5,
    8,
    9,
)
_OPTION_END_OF_STREAM, _OPTION_ERROR_CON_IDC, _OPTION_TRACE_LEVEL = 1, 8, 9
_OPTION_FRAMES_REMAINING = 18  # DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER
_NAL_IDR, _NAL_SPS, _NAL_PPS = 5, 7, 8
_FRAME_PENDING = 0x01  # dsFramePending: not an error


class _SysMemBuffer(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("format", ctypes.c_int),
        ("stride", ctypes.c_int * 2),
    ]


class _BufferInfo(ctypes.Structure):
    _fields_ = [
        ("buffer_status", ctypes.c_int),
        ("in_timestamp", ctypes.c_ulonglong),
        ("out_timestamp", ctypes.c_ulonglong),
        ("system_buffer", _SysMemBuffer),
        ("dst", ctypes.c_void_p * 3),
    ]


class _VideoProperty(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint), ("bitstream_type", ctypes.c_int)]


class _DecodingParam(ctypes.Structure):
    _fields_ = [
        ("file_name_restructed", ctypes.c_char_p),
        ("cpu_load", ctypes.c_uint),
        ("target_dq_layer", ctypes.c_ubyte),
        ("error_concealment", ctypes.c_int),
        ("parse_only", ctypes.c_bool),
        ("video_property", _VideoProperty),
    ]


class DecoderMissing(SourceError):
    """This system has no openh264 (another decoder may take the stream)."""


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    """libopenh264 with its two exported functions typed, or None if this system has none."""
    try:
        lib = ctypes.CDLL("libopenh264.so.7")
        lib.WelsCreateDecoder.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.WelsCreateDecoder.restype = ctypes.c_long
        lib.WelsDestroyDecoder.argtypes = [ctypes.c_void_p]
        lib.WelsDestroyDecoder.restype = None
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    """True if openh264 loads here (frozen runtimes bundle it; a dev host needs libopenh264-7)."""
    return _load() is not None


class H264Decoder:
    """One openh264 decoder: Annex B access units in, BGR images out."""

    def __init__(self) -> None:
        lib = _load()
        if lib is None:
            raise DecoderMissing(
                f"H.264 needs {LIBRARY} (Debian package libopenh264-7), which this system lacks; "
                "install it, or use a runtime with the opencv extra"
            )
        self._lib = lib
        self.errors = 0  # access units the decoder refused
        self.timestamp = 0  # the ``timestamp`` given with the unit of the last picture returned
        self._started = False
        self._parameter_sets = b""  # the last SPS/PPS seen (decode_all), Annex B
        self._open()

    def _open(self) -> None:
        """Create and initialise openh264's decoder object."""
        lib = self._lib
        handle = ctypes.c_void_p()
        if lib.WelsCreateDecoder(ctypes.byref(handle)) or not handle.value:
            raise SourceError("openh264: WelsCreateDecoder failed")
        self._handle: int | None = handle.value
        vtable = ctypes.cast(handle.value, ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)))[0]
        this = ctypes.c_void_p
        self._set_option = ctypes.CFUNCTYPE(ctypes.c_long, this, ctypes.c_int, ctypes.c_void_p)(
            vtable[_SET_OPTION]
        )
        init = ctypes.CFUNCTYPE(ctypes.c_long, this, ctypes.POINTER(_DecodingParam))(
            vtable[_INITIALIZE]
        )
        self._uninit = ctypes.CFUNCTYPE(ctypes.c_long, this)(vtable[_UNINITIALIZE])
        self._decode = ctypes.CFUNCTYPE(
            ctypes.c_int,
            this,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_void_p * 3,
            ctypes.POINTER(_BufferInfo),
        )(vtable[_DECODE_NO_DELAY])
        self._flush = ctypes.CFUNCTYPE(
            ctypes.c_int, this, ctypes.c_void_p * 3, ctypes.POINTER(_BufferInfo)
        )(vtable[_FLUSH_FRAME])
        self._get_option = ctypes.CFUNCTYPE(ctypes.c_long, this, ctypes.c_int, ctypes.c_void_p)(
            vtable[_GET_OPTION]
        )
        quiet = ctypes.c_int(0)  # WELS_LOG_QUIET: we report errors ourselves
        self._set_option(self._handle, _OPTION_TRACE_LEVEL, ctypes.byref(quiet))
        param = _DecodingParam()
        param.target_dq_layer = 0xFF
        param.error_concealment = 0  # ERROR_CON_DISABLE
        param.video_property.size = ctypes.sizeof(_VideoProperty)
        param.video_property.bitstream_type = 0  # VIDEO_BITSTREAM_AVC
        if init(self._handle, ctypes.byref(param)):
            self.close()
            raise SourceError("openh264: the decoder did not initialise")

    def decode(self, unit: bytes, timestamp: int = 0) -> np.ndarray | None:
        """Decode one access unit; its BGR picture, or None (no picture yet, or a broken unit:
        ``errors`` counts those, and the caller should wait for the next IDR).

        With B-frames a picture comes out later than its unit (openh264 reorders to display
        order): ``timestamp`` travels with the unit and comes back in :attr:`timestamp` with
        its picture."""
        if self._handle is None:
            raise SourceError("openh264: the decoder is closed")
        planes = (ctypes.c_void_p * 3)()
        info = _BufferInfo()
        info.in_timestamp = timestamp
        state = self._decode(self._handle, unit, len(unit), planes, ctypes.byref(info))
        if state & ~_FRAME_PENDING:
            self.errors += 1
            return None
        return self._picture(info)

    def decode_all(self, unit: bytes, timestamp: int) -> list[tuple[np.ndarray, int]]:
        """Decode one access unit: every picture that is due, each with its unit's timestamp.

        At an IDR unit the pictures still held for reordering are taken out first
        (:meth:`flush`) and the IDR starts a fresh decoder (with the last SPS/PPS seen if the
        unit lacks them). openh264 2.3.1 otherwise returns the picture held before a closed
        GOP's IDR with the IDR's pixels, and pictures flushed mid-stream are never given back
        to its pool (``dsOutOfMemory`` after about a dozen IDRs); both seen with x264 B-frames,
        ``tests/inference/test_h264_files.py``."""
        idr, sets = _scan(unit)
        if sets:
            self._parameter_sets = sets
        pictures = []
        if idr and self._started:
            pictures = self.flush()
            self._close_handle()
            self._open()
            if not sets:
                unit = self._parameter_sets + unit
        self._started = True
        image = self.decode(unit, timestamp)
        if image is not None:
            pictures.append((image, self.timestamp))
        return pictures

    def flush(self) -> list[tuple[np.ndarray, int]]:
        """The pictures still held for reordering, in display order, each with its unit's
        ``timestamp``: at the end of the stream (no unit may follow: ``decode_all`` starts a
        fresh decoder after it at an IDR)."""
        if self._handle is None:
            return []
        end = ctypes.c_int(1)
        self._set_option(self._handle, _OPTION_END_OF_STREAM, ctypes.byref(end))
        left = ctypes.c_int(0)
        self._get_option(self._handle, _OPTION_FRAMES_REMAINING, ctypes.byref(left))
        pictures = []
        for _ in range(max(0, min(left.value, 64))):  # a DPB holds at most 16 frames
            planes = (ctypes.c_void_p * 3)()
            info = _BufferInfo()
            if self._flush(self._handle, planes, ctypes.byref(info)) & ~_FRAME_PENDING:
                self.errors += 1
                break
            image = self._picture(info)
            if image is not None:
                pictures.append((image, self.timestamp))
        return pictures

    def _picture(self, info: _BufferInfo) -> np.ndarray | None:
        """The BGR picture ``info`` points at (None if it holds none)."""
        if info.buffer_status != 1:
            return None
        self.timestamp = info.out_timestamp
        sysbuf = info.system_buffer
        width, height = sysbuf.width, sysbuf.height
        y_stride, uv_stride = sysbuf.stride[0], sysbuf.stride[1]
        y, u, v = (info.dst[i] for i in range(3))
        if not (y and u and v) or width <= 0 or height <= 0:
            self.errors += 1
            return None
        if width * height > MAX_PIXELS:
            raise SourceError(
                f"openh264: a {width}x{height} picture is beyond {MAX_PIXELS // 1_000_000} "
                "megapixels; not a camera stream we can take"
            )
        fast = libyuv.i420_to_bgr(y, y_stride, u, v, uv_stride, width, height)
        if fast is not None:
            return fast
        return i420_to_bgr_numpy(
            _plane(y, y_stride, height, width),
            _plane(u, uv_stride, (height + 1) // 2, (width + 1) // 2),
            _plane(v, uv_stride, (height + 1) // 2, (width + 1) // 2),
        )

    def _close_handle(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._uninit(handle)
            self._lib.WelsDestroyDecoder(handle)

    def close(self) -> None:
        self._close_handle()


def _scan(unit: bytes) -> tuple[bool, bytes]:
    """(holds an IDR slice, its SPS and PPS NAL units in Annex B) for one Annex B unit."""
    idr, sets = False, []
    pos = unit.find(b"\x00\x00\x01")
    while 0 <= pos < len(unit) - 3:
        nxt = unit.find(b"\x00\x00\x01", pos + 3)
        kind = unit[pos + 3] & 0x1F
        idr = idr or kind == _NAL_IDR
        if kind in (_NAL_SPS, _NAL_PPS):
            sets.append(b"\x00" + unit[pos : nxt if nxt >= 0 else len(unit)].rstrip(b"\x00"))
        pos = nxt
    return idr, b"".join(sets)


def _plane(ptr: int, stride: int, rows: int, cols: int) -> np.ndarray:
    """A view of one decoder plane (valid until the next decode call)."""
    buf = (ctypes.c_ubyte * (stride * rows)).from_address(ptr)
    plane: np.ndarray = np.frombuffer(memoryview(buf), dtype=np.uint8)
    return plane.reshape(rows, stride)[:, :cols]
