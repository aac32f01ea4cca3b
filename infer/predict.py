"""Deployment: class and probability per image, for files of any size and mode.

Conversion to the model's 32x32 RGB contract (stated, so users can match it upstream):
1. a large image is first brought down to about 256 pixels on its short side (a JPEG decoded at 1/2-1/8 scale,
   anything else reduced by an integer box average after decoding; infer/limits.py): the area averages that
   follow are the same, and memory stays bounded;
2. palette and transparent images are converted to RGBA and composited on white; grayscale and CMYK to RGB;
3. the largest centred square is cropped (no distortion of aspect ratio);
4. it is resized to 32x32 with Pillow's BOX filter (area average: the right filter for strong downscaling).
32x32 RGB inputs pass through unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import DEFAULT_SHIFT, softmax
from dawnpipe.infer.backends import Backend, load
from dawnpipe.infer.limits import MAX_DECODED_PIXELS, MAX_IMAGE_PIXELS, REDUCE_TO, UNBOUNDED, Budget
from dawnpipe.infer.modes import run_mode

CONVERSION = (
    "reduced to ~256 px short side (JPEG at 1/2-1/8 scale), RGBA composited on white / grayscale to RGB, centre "
    "square crop, BOX resize to 32x32"
)
MAX_IMAGE_FILE_BYTES = 64 << 20  # bytes; no photo an image classifier is asked about is larger
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK", "YCbCr")  # modes Image.reduce takes


def check_image_size(image, name: str) -> None:
    """Refuse an image whose header promises more than MAX_IMAGE_PIXELS, before any pixel is decoded."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DawnpipeError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP), more than the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP dawnpipe decodes; it was not decoded",
            "downscale it first (the model sees 32x32 pixels)",
        )


def decoded_pixels(image, name: str) -> int:
    """Pixels a (draft-scaled) image will decode to; refuses more than MAX_DECODED_PIXELS before decoding."""
    width, height = image.size
    if width * height > MAX_DECODED_PIXELS:
        raise DawnpipeError(
            f"{name} would decode to {width}x{height} ({width * height / 1e6:.1f} MP) at full size, more than the "
            f"{MAX_DECODED_PIXELS / 1e6:.1f} MP (4096x4096) dawnpipe decodes for a 32x32 model; it was not decoded",
            "downscale it first, or send it as JPEG (decoded at reduced scale)",
        )
    return width * height


def to_model_input(image, size: int = 32) -> np.ndarray:
    """A PIL image (any mode, any size) -> uint8 [size, size, 3] RGB per the module docstring's method."""
    from PIL import Image

    factor = min(image.size) // REDUCE_TO
    if factor >= 2:  # box-average down before the conversions below copy the image at full size
        if image.mode not in _REDUCIBLE:
            image = image.convert("RGBA" if image.mode in ("P", "PA") or "transparency" in image.info else "RGB")
        image = image.reduce(factor)
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (size, size):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def decode_to_model_input(source: Any, name: str, budget: Budget = UNBOUNDED) -> np.ndarray:
    """One image (a path or a binary file object) -> uint8 [32, 32, 3], converted per the module's method.

    Raises the one-line DawnpipeError when the header promises too many pixels (nothing is decoded then), and
    Pillow's own UnidentifiedImageError / OSError / ValueError for data that is not a readable image; callers
    decide what those mean (predict skips the file, the server answers 400). ``budget``: decoded pixels in flight
    across threads (the server's); the decode waits for room, or raises infer.limits.Busy.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(source) as image:  # reads the header only
                check_image_size(image, name)
                if image.format == "JPEG":
                    image.draft("RGB", (REDUCE_TO, REDUCE_TO))  # decode at 1/2..1/8 scale where that still fits
                with budget.reserve(decoded_pixels(image, name)):
                    return to_model_input(image)
    except Image.DecompressionBombError:  # Pillow's own refusal, at twice its limit, before ours is reached
        raise DawnpipeError(
            f"{name} has more pixels than Pillow will decode; it was not decoded",
            "downscale it first (the model sees 32x32 pixels)",
        ) from None


def read_images(paths: list[str | Path]) -> tuple[list[Path], np.ndarray]:
    """Expand folders, read every image, skip non-images with a warning; error when nothing is left."""
    from PIL import UnidentifiedImageError

    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DawnpipeError(f"{path} does not exist", "pass image files or folders of images")
        if not (path.is_dir() or path.is_file()):
            raise DawnpipeError(f"{path} is not a regular file or folder (a pipe or device?)", "pass image files")
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    kept, arrays = [], []
    for file in files:
        if file.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise DawnpipeError(
                f"{file} is {file.stat().st_size >> 20} MB, more than the {MAX_IMAGE_FILE_BYTES >> 20} MB an image "
                "may be; it was not read",
                "pass image files only, downscaled if they are huge",
            )
        try:
            arrays.append(decode_to_model_input(file, str(file)))
            kept.append(file)
        except (UnidentifiedImageError, OSError, ValueError):
            warnings.warn(f"skipping {file}: not an image Pillow can read", stacklevel=2)
    if not kept:
        raise DawnpipeError(f"no readable images in {', '.join(map(str, paths))}", "pass PNG/JPEG/... files or folders")
    return kept, np.stack(arrays)


@dataclass
class Prediction:
    """Top-k classes of one image with their probabilities."""

    source: str
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return {"image": self.source, "predictions": [{"class": c, "probability": p} for c, p in self.top]}


class Predictor:
    """A loaded model a service can hold in memory and call per request.

    with Predictor("runs/x/resnet9-ema-none-fp32.onnx", tta="selective-flip") as predictor:
        predictor.predict_arrays(batch_uint8)       # or predictor.predict_files([...])

    ``tta`` is any mode of ``dawnpipe.common.tta.ALL_MODES``; selective modes use the artifact's calibrated
    per-image threshold (or ``threshold``), so each image's decision does not depend on its batch.
    """

    def __init__(
        self,
        artifact: str | Path,
        *,
        tta: str = "none",
        backend: str = "auto",
        provider: str = "auto",
        top_k: int = 1,
        shift: int = DEFAULT_SHIFT,
        threshold: float | None = None,
        threads: int = 0,
        allow_foreign: bool = False,
        allow_incomplete: bool = False,
    ) -> None:
        if top_k < 1:
            raise DawnpipeError(f"--top-k {top_k} must be at least 1", "pass --top-k 1 or more")
        self.backend: Backend = load(
            artifact,
            backend,
            provider=provider,
            threads=threads,
            allow_foreign=allow_foreign,
            allow_incomplete=allow_incomplete,
        )
        self.tta = self.backend.graph_tta if self.backend.graph_tta != "none" else tta
        self.top_k, self.shift, self.threshold = min(top_k, len(self.backend.classes)), shift, threshold
        self.run(np.zeros((1, 32, 32, 3), np.uint8))  # validate the mode and threshold, and warm up

    @property
    def classes(self) -> list[str]:
        """Class names in logit order."""
        return self.backend.classes

    def threshold_in_use(self) -> float | None:
        """The per-image threshold this predictor's selective mode applies (None for a mode without one)."""
        from dawnpipe.common.tta import parse_mode
        from dawnpipe.infer.modes import resolve_threshold

        if not parse_mode(self.tta)[1] or self.backend.graph_tta != "none":
            return None
        return resolve_threshold(self.backend, self.threshold, self.tta)[0]

    def run(self, images: np.ndarray):
        """The mode's result (logits, per-image selection, views per image) for uint8 [N, 32, 32, 3] images."""
        return run_mode(self.backend, images, self.tta, threshold=self.threshold, shift=self.shift)

    def predict_arrays(self, images: np.ndarray, sources: list[str] | None = None) -> list[Prediction]:
        """Predictions for uint8 [N, 32, 32, 3] RGB images."""
        probs = softmax(self.run(images).logits)
        order = np.argsort(-probs, axis=1)[:, : self.top_k]
        names = sources or [str(i) for i in range(len(images))]
        return [
            Prediction(names[i], [(self.backend.classes[j], float(probs[i, j])) for j in order[i]])
            for i in range(len(images))
        ]

    def predict_files(self, paths: list[str | Path]) -> list[Prediction]:
        """Predictions for image files and folders (converted per the module's stated method)."""
        files, images = read_images(paths)
        return self.predict_arrays(images, [str(f) for f in files])

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predict_files(artifact: str | Path, paths: list[Path], warn=None, **options: Any) -> list[Prediction]:
    """What ``dawnpipe predict`` prints: predictions for image files and folders with a Predictor over
    ``artifact`` (``options``: its keyword arguments); every warning raised on the way goes to ``warn``."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        if warn is not None:
            warnings.showwarning = lambda message, *args, **kwargs: warn(str(message))
        with Predictor(artifact, **options) as predictor:
            return predictor.predict_files(list(paths))
