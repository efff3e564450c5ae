"""Drive the broker with dicomweb-client, the reference Python DICOMweb client
(broker/tests/wado.rs starts the broker and hands over credentials).

argv: <base https URL> <CA PEM> <device cert> <device key> <device token>
      <nurse cert> <nurse key> <nurse token> <DICOM file (multi-frame, native)>
Stores the file as the device, then searches and retrieves as the nurse; prints a JSON
report the Rust side checks. Any mismatch raises (non-zero exit).
"""
import hashlib
import json
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

base, ca, dev_cert, dev_key, dev_token, n_cert, n_key, n_token, path = sys.argv[1:10]


def client(cert, key, token):
    s = requests.Session()
    # REQUESTS_CA_BUNDLE in the environment would override the CA given here.
    s.trust_env = False
    s.cert = (cert, key)
    s.verify = ca
    s.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=f"{base}/dicomweb", session=s)


original = pydicom.dcmread(path)
device = client(dev_cert, dev_key, dev_token)
stored = device.store_instances(datasets=[original])
refs = stored.ReferencedSOPSequence
assert len(refs) == 1, stored

nurse = client(n_cert, n_key, n_token)
studies = nurse.search_for_studies()
assert len(studies) == 1, studies
study_uid = studies[0]["0020000D"]["Value"][0]
series = nurse.search_for_series(study_uid)
assert len(series) == 1, series
series_uid = series[0]["0020000E"]["Value"][0]
instances = nurse.search_for_instances(study_uid, series_uid)
assert len(instances) == 1, instances
sop_uid = instances[0]["00080018"]["Value"][0]
assert sop_uid == refs[0].ReferencedSOPInstanceUID
# Without a study: GET /instances and GET /series.
assert sop_uid in [x["00080018"]["Value"][0] for x in nurse.search_for_instances()]
assert series_uid in [x["0020000E"]["Value"][0] for x in nurse.search_for_series()]
# Without a series: GET /studies/{study}/instances.
in_study = nurse.search_for_instances(study_uid)
assert [i["00080018"]["Value"][0] for i in in_study] == [sop_uid], in_study

retrieved = nurse.retrieve_study(study_uid)
assert len(retrieved) == 1, retrieved
one = nurse.retrieve_instance(study_uid, series_uid, sop_uid)
frames = int(original.NumberOfFrames)
size = original.Rows * original.Columns * original.SamplesPerPixel * original.BitsAllocated // 8
wanted = [frames, 1]
got = nurse.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=wanted)
assert len(got) == 2, len(got)
for n, data in zip(wanted, got):
    assert data == original.PixelData[(n - 1) * size:n * size], f"frame {n} differs"
meta = nurse.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
# Pixel data are referenced from the metadata (PS3.18 BulkDataURI), at every level, and
# the reference gives every frame.
uri = meta["7FE00010"]["BulkDataURI"]
assert uri.startswith(base + "/dicomweb/studies/"), uri
assert [m["7FE00010"]["BulkDataURI"] for m in nurse.retrieve_study_metadata(study_uid)] == [uri]
bulk = nurse.retrieve_bulkdata(uri)

print(json.dumps({
    "study_uid": study_uid,
    "sop_uid": sop_uid,
    "original_sop_uid": str(original.SOPInstanceUID),
    "study_patient_name": str(retrieved[0].PatientName),
    "instance_patient_id": str(one.PatientID),
    "identity_removed": str(one.get("PatientIdentityRemoved", "")),
    "pixels_identical": one.PixelData == original.PixelData,
    "frames_checked": len(got),
    "bulkdata_parts": len(bulk),
    "bulkdata_identical": b"".join(bulk) == original.PixelData,
    "frames": frames,
    "metadata_name": meta["00100010"]["Value"][0]["Alphabetic"],
    "rows": instances[0]["00280010"]["Value"][0],
}))
