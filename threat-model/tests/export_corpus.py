#!/usr/bin/env python3
"""Attacker's helper for T7 (run by tests/attacks_export.rs; needs pydicom).

  export_corpus.py make OUT_DIR     four patients, each one study of pydicom's CT_small and
                                    MR_small, every identifying or quasi-identifying
                                    attribute a canary (names, ids, dates including a date
                                    the PS3.15 table does not list, institution, device
                                    serial, age, sex, size, weight, descriptions, private
                                    tags), a marker in each pixel stream, and one extra CT
                                    with burned-in annotation (not for research). Writes
                                    OUT_DIR/*.dcm and OUT_DIR/manifest.json.
  export_corpus.py inspect FILE...  for each file, what an attacker would try to use: every
                                    UID at any depth, every non-empty date/time at any
                                    depth, and the quasi-identifying attributes (JSON).
  export_corpus.py plant IN OUT     a control copy of IN with Institution Name, Patient's
                                    Age and a Study Date set, to show `inspect` sees them.
"""
import json
import os
import sys

import pydicom
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

config.settings.reading_validation_mode = config.IGNORE
config.settings.writing_validation_mode = config.IGNORE

QUASI = [
    "PatientName", "PatientID", "PatientAge", "PatientSex", "PatientSize", "PatientWeight",
    "PatientBirthDate", "EthnicGroup", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "DeviceSerialNumber", "StationName", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "OperatorsName", "StudyDescription",
    "SeriesDescription", "ImageComments", "BurnedInAnnotation", "PatientIdentityRemoved",
    "LongitudinalTemporalInformationModified", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "FrameOfReferenceUID",
]


def testdata(name):
    try:
        return get_testdata_file(name, download=False)
    except TypeError:
        return get_testdata_file(name)


def make(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"files": [], "canaries": [], "uids": [], "dates": [], "pixel_markers": [], "burned_marker": None}
    n = 0
    for p in range(1, 5):
        study_uid = "1.2.826.0.1.3680043.10.543.7%d" % p
        study_date = "201903%02d" % (10 + p)
        birth = "19%02d06%02d" % (20 + p, 10 + p)
        for kind in ("CT", "MR", "BURNED") if p == 1 else ("CT", "MR"):
            n += 1
            ds = pydicom.dcmread(testdata("MR_small.dcm" if kind == "MR" else "CT_small.dcm"), force=True)
            c = lambda what: "CANARY%s%d%s" % (what, p, kind)
            # One person per patient: the vault must see the same name, id and birth date.
            ds.PatientName = "CANARYFAM%d^CANARYGIVEN%d" % (p, p)
            ds.PatientID = "CANARYMRN%d" % p
            ds.IssuerOfPatientID = "CANARYISSUER"
            ds.PatientBirthDate = birth
            ds.PatientSex = "F" if p % 2 else "M"
            ds.PatientAge = "%03dY" % (80 + p)
            ds.PatientSize = "1.9%d" % p
            ds.PatientWeight = "13%d" % p
            ds.EthnicGroup = c("ETHNIC")
            ds.PatientAddress = c("ADDRESS")
            ds.AccessionNumber = c("ACC")
            ds.StudyID = c("SID")
            ds.InstitutionName = c("INSTITUTION")
            ds.InstitutionAddress = c("INSTADDR")
            ds.InstitutionalDepartmentName = c("DEPT")
            ds.StationName = c("STATION")
            ds.DeviceSerialNumber = c("SERIAL")
            ds.ReferringPhysicianName = c("REFDOC")
            ds.OperatorsName = c("OPERATOR")
            ds.StudyDescription = "CT CHEST for " + c("DESC")
            ds.SeriesDescription = "AXIAL " + c("SERDESC")
            ds.ImageComments = c("COMMENT")
            ds.StudyDate = study_date
            ds.SeriesDate = study_date
            ds.AcquisitionDate = study_date
            ds.ContentDate = study_date
            ds.StudyTime = "101112"
            # Procedure Creation Date: in the dictionary, not in Table E.1-1.
            ds.add_new(0x00144076, "DA", "201903%02d" % (20 + p))
            ds.add_new(0x00290010, "LO", "CANARYPRIVATE")
            ds.add_new(0x00291001, "LO", c("PRIVVAL"))
            ds.BurnedInAnnotation = "YES" if kind == "BURNED" else "NO"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = "%s.%d" % (study_uid, {"CT": 1, "MR": 2, "BURNED": 3}[kind])
            ds.SOPInstanceUID = "%s.%d.1" % (study_uid, {"CT": 1, "MR": 2, "BURNED": 3}[kind])
            ds.FrameOfReferenceUID = "%s.9" % study_uid
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = "%s.5.5" % study_uid
            ds.ReferencedImageSequence = Sequence([ref])
            marker = ("PIXELMARKER%d%s" % (p, kind)).encode()
            pixels = bytearray(ds.PixelData)
            pixels[: len(marker)] = marker
            ds.PixelData = bytes(pixels)
            if kind == "BURNED":
                manifest["burned_marker"] = marker.decode()
            else:
                manifest["pixel_markers"].append(marker.decode())
            for v in (ds.PatientName, ds.PatientID, ds.EthnicGroup, ds.PatientAddress, ds.AccessionNumber,
                      ds.StudyID, ds.InstitutionName, ds.InstitutionAddress, ds.InstitutionalDepartmentName,
                      ds.StationName, ds.DeviceSerialNumber, ds.ReferringPhysicianName, ds.OperatorsName,
                      c("DESC"), c("SERDESC"), ds.ImageComments, c("PRIVVAL"), "CANARYFAM%d" % p, "CANARYGIVEN%d" % p):
                manifest["canaries"].append(str(v))
            manifest["uids"] += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                 ds.FrameOfReferenceUID, ref.ReferencedSOPInstanceUID]
            manifest["dates"] += [birth, study_date, "201903%02d" % (20 + p)]
            name = "p%d-%s.dcm" % (p, kind.lower())
            ds.save_as(os.path.join(out_dir, name), enforce_file_format=True)
            manifest["files"].append({"name": name, "patient": p, "mrn": ds.PatientID, "kind": kind})
    for k in ("canaries", "uids", "dates"):
        manifest[k] = sorted(set(manifest[k]))
    manifest["canaries"].append("CANARYISSUER")
    json.dump(manifest, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)


def inspect(paths):
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        uids, temporal = [], []

        def visit(d, el):
            if el.VR == "UI" and el.value:
                vals = el.value if isinstance(el.value, (list, pydicom.multival.MultiValue)) else [el.value]
                uids.extend(str(v) for v in vals)
            if el.VR in ("DA", "DT", "TM") and el.value not in (None, "", b""):
                temporal.append(["%08X" % el.tag, str(el.value)])

        ds.walk(visit)
        uids.append(str(ds.file_meta.MediaStorageSOPInstanceUID))
        attrs = {}
        for kw in QUASI:
            v = ds.get(kw)
            attrs[kw] = None if v is None or v == "" else str(v)
        attrs["private"] = sum(1 for el in ds.iterall() if el.tag.is_private)
        out.append({"path": path, "uids": uids, "temporal": temporal, "attrs": attrs})
    print(json.dumps(out))


def plant(src, dst):
    ds = pydicom.dcmread(src)
    ds.InstitutionName = "CANARYPLANTED"
    ds.PatientAge = "087Y"
    ds.StudyDate = "20190311"
    ds.save_as(dst)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "inspect":
        inspect(sys.argv[2:])
    elif sys.argv[1] == "plant":
        plant(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
