"""Associate with pynetdicom and judge a refusal by the A-ASSOCIATE-RJ PDU that arrived.

pynetdicom 3.0 can report an association it saw rejected as aborted when the RJ beats its
own ACSE thread (it then finds the socket already closed by its DUL thread). The test
scripts of cleave-dimse and of the broker import this module (their Rust side puts this
folder on PYTHONPATH), so the workaround lives in one place.
"""
from pynetdicom import evt


def associate(ae, port, ext_neg, tls_args):
    """The established association, or None after printing "REJECTED result source reason"
    (from the RJ PDU received) or "ABORTED"."""
    rejects = []

    def on_pdu(event):
        if type(event.pdu).__name__ == "A_ASSOCIATE_RJ":
            rejects.append(event.pdu)

    assoc = ae.associate("127.0.0.1", int(port), ae_title="CLEAVE", ext_neg=ext_neg, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    if assoc.is_established:
        return assoc
    if rejects:
        rj = rejects[0]
        print("REJECTED %d %d %d" % (rj.result, rj.source, rj.reason_diagnostic))
    else:
        print("ABORTED")
    return None
