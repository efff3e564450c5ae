//! A refused association must reach the peer as an A-ASSOCIATE-RJ with its reason, even
//! when the peer has already sent more than the A-ASSOCIATE-RQ. A server that simply drops
//! the socket with those bytes unread makes the kernel reset the connection, and the peer
//! may see the reset instead of the reason ("aborted" instead of "rejected").
mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn fail_a_refusal_arrives_as_a_reject_even_when_the_peer_sent_more_than_the_request() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    for round in 0..20 {
        let mut tls = tls_connect(&pki, &server).await;
        let mut bytes = associate_rq("INTRUDER", "1.2.840.10008.1.1", "1.2.840.10008.1.2");
        // An eager peer: the first P-DATA-TF is on its way before the answer.
        let junk = vec![0x42u8; 200_000];
        bytes.extend_from_slice(&[0x04, 0x00]);
        bytes.extend_from_slice(&(junk.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&junk);
        tls.write_all(&bytes).await.unwrap();
        tls.flush().await.unwrap();
        // Read one PDU, as a DICOM peer does, then close (PS3.8: the requestor closes
        // the transport connection after an A-ASSOCIATE-RJ).
        let mut answer = vec![0u8; 10];
        let read = tls.read_exact(&mut answer).await;
        assert!(
            read.is_ok() && answer.first() == Some(&0x03),
            "round {round}: expected an A-ASSOCIATE-RJ, got {:?} (read: {read:?})",
            answer.first()
        );
        // PS3.8 9.3.4: result 1 (permanent), source 1 (service user), reason 3 (calling AE title not recognized).
        assert_eq!(answer.get(7..10), Some(&[1u8, 1, 3][..]), "round {round}: wrong rejection reason");
        drop(tls);
    }
    server.shutdown().await.unwrap();
}
