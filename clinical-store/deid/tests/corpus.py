#!/usr/bin/env python3
"""Test helper for cleave-deid (run by tests/corpus.rs; needs pydicom).

  corpus.py make TABLE_JSON OUT_DIR    copy pydicom's bundled test files into OUT_DIR,
                                       fill every attribute the Basic Profile acts on with a
                                       unique canary, add private tags, overlays, curves,
                                       signatures, padding and nested sequences carrying
                                       canaries; write OUT_DIR/manifest.json.
  corpus.py verify DIR                 for every DIR/<name>.in.dcm and DIR/<name>.out.dcm:
                                       the output must open in pydicom, and its pixel data
                                       must be byte-identical to the input's.
"""
import json
import os
import sys

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.data import get_testdata_file

config.settings.reading_validation_mode = config.IGNORE
config.settings.writing_validation_mode = config.IGNORE

# Bundled with the pydicom wheel (get_testdata_file would try to download the others).
FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_expb.dcm", "image_dfl.dcm", "JPEG2000.dcm", "JPEG2000-embedded-sequence-delimiter.dcm",
    "MR_small_RLE.dcm", "MR_small_padded.dcm", "SC_rgb_rle_2frame.dcm", "rtplan.dcm", "rtstruct.dcm",
    "rtdose.dcm", "test-SR.dcm", "examples_overlay.dcm", "examples_ybr_color.dcm", "waveform_ecg.dcm",
    "nested_priv_SQ.dcm", "priv_SQ.dcm", "liver_1frame.dcm", "JPEG-lossy.dcm", "reportsi.dcm",
    "SC_rgb_small_odd_big_endian.dcm", "emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm",
]
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UT", "UC", "DA", "DT", "TM", "UR"}

# Identity attributes and the ExtractedIdentity field each must land in.
IDENTITY = {
    0x00100010: "patient_name", 0x00100020: "patient_id", 0x00100021: "issuer_of_patient_id",
    0x00100030: "birth_date", 0x00101040: "address", 0x00102154: "telephone_numbers",
    0x00102160: "ethnic_group", 0x00101060: "mother_birth_name", 0x00101080: "military_rank",
    0x00102150: "country_of_residence", 0x00102152: "region_of_residence", 0x00101005: "birth_name",
    0x00080050: "accession_number",
}


class Canaries:
    def __init__(self):
        self.n = 0
        self.all = []

    def text(self):
        self.n += 1
        c = "CANARY%04d" % self.n
        self.all.append(c)
        return c

    def uid(self):
        self.n += 1
        c = "1.2.826.0.1.3680043.10.543.%d" % (900000 + self.n)
        self.all.append(c)
        return c


def leaf_item(c):
    """An item whose every attribute must be removed or replaced wherever it appears."""
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = c.uid()
    item.PatientName = c.text() + "^NESTED"
    item.add_new(0x00091010, "LO", "CANARYCREATOR%d" % c.n)
    item.add_new(0x00091001, "LO", c.text())
    return item


def fill(ds, rows, c):
    identity = {}
    for row in rows:
        tag = row["tag"]
        if "X" in tag or "G" in tag:
            continue
        t = int(tag[1:5] + tag[6:10], 16)
        if t >> 16 in (0x0000, 0x0002) or t in (0xFFFAFFFA, 0xFFFCFFFC):
            continue
        try:
            vr = dictionary_VR(t)
        except KeyError:
            continue
        if vr == "SQ":
            inner = leaf_item(c)
            deeper = Dataset()
            deeper.SourceImageSequence = Sequence([leaf_item(c)])
            deeper.PatientID = c.text()
            ds.add_new(t, "SQ", Sequence([inner, deeper]))
        elif vr == "UI":
            ds.add_new(t, "UI", c.uid())
        elif vr in TEXT_VRS:
            v = c.text()
            if vr == "PN":
                v += "^GIVEN"
            ds.add_new(t, vr, v)
            if t in IDENTITY:
                identity[IDENTITY[t]] = v
    identity["study_date"] = ds.StudyDate
    for t in (0x0020000D, 0x0020000E, 0x00080018):
        identity[{0x0020000D: "study", 0x0020000E: "series", 0x00080018: "sop"}[t]] = ds[t].value
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # Other Patient IDs Sequence with identifiers to extract.
    other = Dataset()
    other.PatientID = c.text()
    other.IssuerOfPatientID = c.text()
    ds.OtherPatientIDsSequence = Sequence([other])
    identity["other_patient_id"] = other.PatientID
    # Private attributes, a private sequence, curves, overlays, a signature, original attributes.
    ds.add_new(0x00290010, "LO", "CANARYPRIVCREATOR")
    ds.add_new(0x00291001, "LO", c.text())
    ds.add_new(0x00291002, "SQ", Sequence([leaf_item(c)]))
    ds.add_new(0x50003000, "OW", (c.text() + "CURVE!").encode())
    ds.add_new(0x60003000, "OW", (c.text() + "OVERLAY!").encode())
    ds.add_new(0x60004000, "LT", c.text())
    sig = Dataset()
    sig.add_new(0x04000100, "UI", c.uid())
    sig.add_new(0x04000120, "OB", (c.text() + "SIG!").encode())
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([sig]))
    orig = Dataset()
    orig.ModifiedAttributesSequence = Sequence([leaf_item(c)])
    ds.OriginalAttributesSequence = Sequence([orig])
    # A kept sequence (X/Z/U*) that nests identifying attributes two levels down.
    ds.ReferencedImageSequence = Sequence([leaf_item(c), Dataset()])
    ds.ReferencedImageSequence[1].SourceImageSequence = Sequence([leaf_item(c)])
    # Trailing padding (after the pixel data), with a canary inside.
    ds.add_new(0xFFFCFFFC, "OB", (c.text() + "PADDING!").encode())
    return identity


def make(table_path, out_dir):
    rows = json.load(open(table_path))
    manifest = []
    os.makedirs(out_dir, exist_ok=True)
    for name in FILES:
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:
            path = get_testdata_file(name)
        if not path or not os.path.exists(path):
            continue
        ds = pydicom.dcmread(path, force=True)
        if "SOPClassUID" not in ds:
            print("skipping %s: no SOP Class UID" % name)
            continue
        if "TransferSyntaxUID" not in ds.file_meta:
            # A few bundled files are bare datasets; give them the meta PS3.10 requires.
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        if not ds.file_meta.get("MediaStorageSOPClassUID"):
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        c = Canaries()
        identity = fill(ds, rows, c)
        stem = name[:-4]
        out = os.path.join(out_dir, stem + ".in.dcm")
        ds.save_as(out, enforce_file_format=True)
        manifest.append({
            "name": stem,
            "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "canaries": c.all,
            "identity": identity,
            "has_pixels": "PixelData" in ds,
        })
    json.dump(manifest, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)
    print("made %d files" % len(manifest))


def pixel_bytes(ds):
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in ds:
            return ds[kw].value
    return None


def verify(d):
    failures = []
    n = 0
    for f in sorted(os.listdir(d)):
        if not f.endswith(".in.dcm"):
            continue
        stem = f[:-7]
        out = os.path.join(d, stem + ".out.dcm")
        try:
            a = pydicom.dcmread(os.path.join(d, f))
            b = pydicom.dcmread(out)
            b.walk(lambda ds, el: el.value)  # force every element to parse
            if pixel_bytes(a) != pixel_bytes(b):
                failures.append("%s: pixel data differ" % stem)
            if b.get("PatientIdentityRemoved") != "YES":
                failures.append("%s: PatientIdentityRemoved is not YES" % stem)
            if b.file_meta.MediaStorageSOPInstanceUID != b.SOPInstanceUID:
                failures.append("%s: meta and dataset SOP Instance UIDs differ" % stem)
            n += 1
        except Exception as e:  # noqa: BLE001 - report every failure, then fail
            failures.append("%s: pydicom could not read the output: %r" % (stem, e))
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("verified %d files" % n)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2])
    else:
        sys.exit("usage: corpus.py make TABLE OUT_DIR | verify DIR")
