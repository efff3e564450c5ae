"""Prepare real DICOM test files for the WADO-RS tests (driven by broker/tests/wado.rs).

argv: <outdir> <spec JSON: [{"src": pydicom test file, "name": out name, "attrs": {keyword: value}}]>
Writes <outdir>/<name>.dcm with the attributes set (canary identities), and
<outdir>/<name>.frame<N> holding the exact bytes of each frame as pydicom sees them
(native: the slice of Pixel Data; encapsulated: the frame's fragments joined).
Prints {"<name>": {"frames": n, "pixel_sha256": hex}} on stdout.
"""
import hashlib
import json
import os
import sys

import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

out_dir, spec = sys.argv[1], json.loads(sys.argv[2])
summary = {}
for item in spec:
    ds = pydicom.dcmread(get_testdata_file(item["src"]))
    for keyword, value in item["attrs"].items():
        setattr(ds, keyword, value)
    path = os.path.join(out_dir, item["name"] + ".dcm")
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        parts = list(generate_frames(pixels, number_of_frames=frames))
    else:
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        parts = [pixels[i * size:(i + 1) * size] for i in range(frames)]
    for n, data in enumerate(parts, start=1):
        with open(os.path.join(out_dir, f"{item['name']}.frame{n}"), "wb") as f:
            f.write(data)
    summary[item["name"]] = {"frames": frames, "pixel_sha256": hashlib.sha256(pixels).hexdigest()}
print(json.dumps(summary))
