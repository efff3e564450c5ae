"""Open retrieved instances with pydicom and report what they say (broker/tests/wado.rs).

argv: files. Prints one JSON object per file, in order, in a list.
"""
import hashlib
import json
import sys

import pydicom

out = []
for path in sys.argv[1:]:
    ds = pydicom.dcmread(path)
    out.append({
        "PatientName": str(ds.get("PatientName", "")),
        "PatientID": str(ds.get("PatientID", "")),
        "IssuerOfPatientID": str(ds.get("IssuerOfPatientID", "")),
        "PatientBirthDate": str(ds.get("PatientBirthDate", "")),
        "PatientSex": str(ds.get("PatientSex", "")),
        "AccessionNumber": str(ds.get("AccessionNumber", "")),
        "PatientIdentityRemoved": str(ds.get("PatientIdentityRemoved", "")),
        "SOPInstanceUID": str(ds.SOPInstanceUID),
        "StudyInstanceUID": str(ds.StudyInstanceUID),
        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
        "pixel_sha256": hashlib.sha256(ds.PixelData).hexdigest(),
    })
print(json.dumps(out))
