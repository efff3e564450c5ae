"""Compare a rendered JPEG with the rendering PS3.3 describes (broker/tests/wado.rs).

argv: <original DICOM> <rendered JPEG> [<center> <width>]
Computes the expected 8-bit image from the original with numpy: Modality LUT (rescale),
then the linear VOI window (the one given, else the header's first, else the frame's
range), MONOCHROME1 inverted; decodes the JPEG with Pillow; prints the mean and largest
absolute difference, and the JPEG's size and mode, as JSON.
"""
import json
import sys

import numpy as np
import pydicom
from PIL import Image

ds = pydicom.dcmread(sys.argv[1])
img = Image.open(sys.argv[2])
frame = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
x = frame.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
if len(sys.argv) > 3:
    c, w = float(sys.argv[3]), float(sys.argv[4])
elif "WindowCenter" in ds and "WindowWidth" in ds:
    first = lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)
    c, w = first(ds.WindowCenter), first(ds.WindowWidth)
else:
    lo, hi = x.min(), x.max()
    c, w = (lo + hi) / 2 + 0.5, max(hi - lo + 1, 1)
y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
             np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / max(w - 1, 1) + 0.5) * 255))
y = np.clip(np.round(y), 0, 255)
if ds.PhotometricInterpretation == "MONOCHROME1":
    y = 255 - y
got = np.asarray(img.convert("L"), dtype=np.float64)
diff = np.abs(got - y) if got.shape == y.shape else np.array([255.0])
print(json.dumps({"mae": float(diff.mean()), "max": float(diff.max()), "size": list(img.size), "mode": img.mode,
                  "spread": float(y.std())}))
