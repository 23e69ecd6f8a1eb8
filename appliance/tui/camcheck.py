"""Camera checks: list V4L2 devices, test-capture a source, coarse text preview (no Textual).

Capture goes through the inference package's sources, exactly as the pipeline reads the camera
(V4L2 without OpenCV). Brightness is the mean grey level (0-255); blur is the variance of the
Laplacian (a sharp scene is in the hundreds or more, a defocused or covered lens near zero),
both in numpy, so the check works in a runtime without OpenCV (the default image's).
"""

from __future__ import annotations

import dataclasses
import glob
import time
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    import numpy as np

RAMP = " .:-=+*#%@"  # dark -> bright, plain ASCII for serial terminals
DARK, BRIGHT, BLURRY = 40.0, 220.0, 50.0


@dataclasses.dataclass(frozen=True)
class V4l2Device:
    """A video device the kernel lists."""

    path: str
    name: str


@dataclasses.dataclass(frozen=True)
class CaptureReport:
    """What a test capture measured."""

    uri: str
    frames: int
    width: int
    height: int
    fps: float
    brightness: float
    blur: float
    preview: str

    def verdicts(self) -> list[str]:
        """Plain-language findings (empty: looks fine)."""
        out = []
        if self.brightness < DARK:
            out.append(
                f"too dark (mean {self.brightness:.0f} < {DARK:.0f}): lens covered or no light?"
            )
        if self.brightness > BRIGHT:
            out.append(f"too bright (mean {self.brightness:.0f} > {BRIGHT:.0f}): overexposed")
        if self.blur < BLURRY:
            out.append(f"blurry (sharpness {self.blur:.0f} < {BLURRY:.0f}): check focus")
        return out


def list_v4l2(sys_root: Path = Path("/")) -> list[V4l2Device]:
    """``/sys/class/video4linux/*/name`` joined with the ``/dev/video*`` nodes present."""
    found: dict[str, str] = {}
    for name_file in sorted(glob.glob(str(sys_root / "sys/class/video4linux/*/name"))):
        node = Path(name_file).parent.name
        try:
            found[f"/dev/{node}"] = Path(name_file).read_text().strip()
        except OSError:
            found[f"/dev/{node}"] = "?"
    for dev in sorted(glob.glob(str(sys_root / "dev/video*"))):
        found.setdefault("/dev/" + Path(dev).name, "(no sysfs name)")
    return [V4l2Device(path, name) for path, name in sorted(found.items())]


def preview(gray: np.ndarray, cols: int = 48, rows: int = 12) -> str:
    """The image as ``rows`` lines of ``cols`` ASCII shades (area-averaged)."""
    import numpy as np

    h, w = gray.shape
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    lines = []
    for r in range(rows):
        band = gray[ys[r] : max(ys[r + 1], ys[r] + 1)]
        cells = [band[:, xs[c] : max(xs[c + 1], xs[c] + 1)].mean() for c in range(cols)]
        lines.append("".join(RAMP[min(len(RAMP) - 1, int(v) * len(RAMP) // 256)] for v in cells))
    return "\n".join(lines)


def to_gray(image: np.ndarray, color: str) -> np.ndarray:
    """HxWx3 uint8 (``color`` RGB or BGR; HxW passes through) to grey, BT.601 as OpenCV."""
    import numpy as np

    if image.ndim == 2:
        return image
    r, b = (0, 2) if color == "RGB" else (2, 0)
    rgb = image.astype(np.float32)
    y = rgb[..., r] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., b] * 0.114
    gray: np.ndarray = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return gray


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (OpenCV's ksize 1, reflect-101 border)."""
    import numpy as np

    p = np.pad(gray.astype(np.float64), 1, mode="reflect")  # numpy's reflect = reflect-101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * p[1:-1, 1:-1]
    return float(lap.var())


def capture_check(uri: str, frames: int = 30, timeout_s: float = 10.0) -> CaptureReport:
    """Read up to ``frames`` frames from ``uri``; raise ApplianceError if none arrive.

    Blocks for up to ``frames`` frame periods (2 s for 30 frames of a 15 fps camera).
    """
    from appliance.inference.sources import is_live_uri, open_source

    # A video file is read at its own frame rate, as a camera would deliver it: the measured
    # FPS then means what it means for a camera (unpaced it is only the decoder's speed).
    paced = uri if is_live_uri(uri) or "?" in uri or Path(uri).is_dir() else f"{uri}?realtime=1"
    source = open_source(paced)
    got, first_t, last_t, last = 0, 0.0, 0.0, None
    deadline = time.monotonic() + timeout_s
    try:
        while got < frames and time.monotonic() < deadline:
            frame = source.read()
            if frame is None:
                break
            now = time.monotonic()
            if got == 0:
                first_t = now
            last_t, last = now, frame
            got += 1
    finally:
        source.close()
    if last is None:
        raise ApplianceError(f"{uri}: no frame arrived within {timeout_s:.0f} s")
    image = last.image
    gray = to_gray(image, last.color)
    fps = (got - 1) / (last_t - first_t) if got > 1 and last_t > first_t else 0.0
    return CaptureReport(
        uri=uri,
        frames=got,
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        fps=fps,
        brightness=float(gray.mean()),
        blur=laplacian_variance(gray),
        preview=preview(gray),
    )
