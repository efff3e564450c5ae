//! P-DATA-TF as the wire allows it, over a real TLS association: a data set split across
//! several values in one PDU (and values of one and zero bytes) arrives whole, and a PDU
//! whose items do not add up is answered with an A-ABORT, storing nothing. dcmtk and
//! pynetdicom send one value per PDU, so only a hand-built peer reaches these paths.
mod common;

use common::*;
use dicom_ul::pdu::PresentationContextResultReason;
use dicom_ul::Pdu;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const COMMAND: u8 = 0x01;
const LAST: u8 = 0x02;

async fn read_pdu(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut pdu = vec![0u8; 6];
    tls.read_exact(&mut pdu).await.unwrap();
    let len = u32::from_be_bytes(pdu[2..6].try_into().unwrap()) as usize;
    pdu.resize(6 + len, 0);
    tls.read_exact(&mut pdu[6..]).await.unwrap();
    pdu
}

/// Associates as STORESCU proposing CT Image Storage in `ts` on context 1.
async fn associate(pki: &Pki, server: &cleave_dimse::ServerHandle, ts: &str) -> TlsStream<TcpStream> {
    let mut tls = tls_connect(pki, server).await;
    tls.write_all(&associate_rq("STORESCU", CT_IMAGE_STORAGE, ts)).await.unwrap();
    let ac = read_pdu(&mut tls).await;
    match dicom_ul::read_pdu(&ac[..], 1 << 20, false) {
        Ok(Some(Pdu::AssociationAC(ac))) => {
            assert!(ac.presentation_contexts.iter().any(|c| c.id == 1 && c.reason == PresentationContextResultReason::Acceptance), "context refused")
        }
        other => panic!("expected an A-ASSOCIATE-AC, got {other:?}"),
    }
    tls
}

/// An implicit VR little endian element of a command set.
fn element(out: &mut Vec<u8>, elem: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(0);
    }
    b
}

/// A C-STORE-RQ command set (PS3.7 9.3.1.1) with a data set following.
fn c_store_rq(message_id: u16, sop_instance: &str) -> Vec<u8> {
    let mut body = Vec::new();
    element(&mut body, 0x0002, &uid(CT_IMAGE_STORAGE));
    element(&mut body, 0x0100, &0x0001u16.to_le_bytes());
    element(&mut body, 0x0110, &message_id.to_le_bytes());
    element(&mut body, 0x0700, &0u16.to_le_bytes());
    element(&mut body, 0x0800, &0u16.to_le_bytes());
    element(&mut body, 0x1000, &uid(sop_instance));
    let mut out = Vec::new();
    element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A P-DATA-TF PDU holding `values` as (context, message control header, bytes).
fn p_data(values: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (context, control, value) in values {
        body.extend_from_slice(&(value.len() as u32 + 2).to_be_bytes());
        body.push(*context);
        body.push(*control);
        body.extend_from_slice(value);
    }
    let mut pdu = vec![0x04, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&body);
    pdu
}

/// The status (0000,0900) of the C-STORE-RSP in a P-DATA-TF PDU.
fn status_of(pdu: &[u8]) -> u16 {
    assert_eq!(pdu[0], 0x04, "expected a P-DATA-TF, got PDU type {:#04x}", pdu[0]);
    let command = &pdu[12..];
    let mut pos = 0;
    while pos + 8 <= command.len() {
        let elem = u16::from_le_bytes([command[pos + 2], command[pos + 3]]);
        let len = u32::from_le_bytes(command[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if elem == 0x0900 {
            return u16::from_le_bytes([command[pos + 8], command[pos + 9]]);
        }
        pos += 8 + len;
    }
    panic!("the response has no status");
}

fn sop_instance_of(data_set_len: usize) -> String {
    format!("1.2.826.0.1.3680043.10.543.{data_set_len}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_set_in_several_values_per_pdu_arrives_whole() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let (ts, data_set) = split_part10(&pydicom_file("CT_small.dcm"));
    let mut tls = associate(&pki, &server, &ts).await;
    let sop = sop_instance_of(data_set.len());
    tls.write_all(&p_data(&[(1, COMMAND | LAST, &c_store_rq(1, &sop))])).await.unwrap();
    // One PDU with four values (one of them empty), then one with the rest in two values,
    // the second of them the last.
    let (a, rest) = data_set.split_at(1);
    let (b, rest) = rest.split_at(100);
    let (c, rest) = rest.split_at(1000);
    let (d, e) = rest.split_at(rest.len() - 10);
    tls.write_all(&p_data(&[(1, 0, a), (1, 0, b), (1, 0, &[]), (1, 0, c)])).await.unwrap();
    tls.write_all(&p_data(&[(1, 0, d), (1, LAST, e)])).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), read_pdu(&mut tls))
        .await
        .expect("no C-STORE-RSP: the server did not see the whole data set");
    assert_eq!(status_of(&answer), 0x0000, "C-STORE failed");
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1, sop);
    let written = std::fs::read(&stored[0].0).unwrap();
    let (_, start) = meta_info(&written);
    assert!(written[start..] == data_set[..], "the stored data set differs from the one sent");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_p_data_whose_items_do_not_add_up_is_aborted_and_nothing_is_stored() {
    let pki = Pki::new();
    let sink = DirSink::new();
    let server = start(&pki, sink.clone()).await;
    let (ts, data_set) = split_part10(&pydicom_file("CT_small.dcm"));
    let (head, tail) = data_set.split_at(4096);
    // An item running past its PDU, an item too short for its own header, and a P-DATA-TF
    // with no item at all, each after the first part of a data set was accepted.
    let mut past_end = p_data(&[(1, LAST, tail)]);
    past_end[6..10].copy_from_slice(&(tail.len() as u32 + 3).to_be_bytes());
    let mut too_short = p_data(&[(1, LAST, tail)]);
    too_short[6..10].copy_from_slice(&1u32.to_be_bytes());
    let empty = vec![0x04, 0, 0, 0, 0, 0];
    for (n, bad) in [past_end, too_short, empty].into_iter().enumerate() {
        let mut tls = associate(&pki, &server, &ts).await;
        tls.write_all(&p_data(&[(1, COMMAND | LAST, &c_store_rq(1, &sop_instance_of(n)))])).await.unwrap();
        tls.write_all(&p_data(&[(1, 0, head)])).await.unwrap();
        tls.write_all(&bad).await.unwrap();
        let answer = read_pdu(&mut tls).await;
        assert_eq!(answer[0], 0x07, "case {n}: expected an A-ABORT, got PDU type {:#04x}", answer[0]);
    }
    // Shutting down waits for the sink calls; each ended with an error, storing nothing.
    server.shutdown().await.unwrap();
    assert!(sink.stored().is_empty(), "an aborted instance was stored");
}
