//! P-DATA-TF PDUs read into buffers that are reused for the whole association, and their
//! presentation data values handed on without copying.
//!
//! Why not dicom-ul's `read_pdu` for P-DATA: it copies each value out of the PDU twice
//! (`copy_to_bytes(..).to_vec()`), and reading each PDU into a fresh zeroed `Vec` adds a
//! fill and, under the broker's wiping allocator, a wipe when it is freed. For a C-STORE
//! that is six passes over every byte of the instance on the thread that also decrypts
//! TLS, before de-identification has touched it. Here a PDU is read once into a pooled
//! buffer; each value is a [`Fragment`], a range of that buffer, which goes to the sink
//! as it is and returns the buffer to the pool when the sink is done with it.
//!
//! The item layout (PS3.8 9.3.5 and Annex E), after the 6-byte PDU header:
//! `item-length:u32be, presentation-context-id:u8, message-control-header:u8, value`,
//! where `item-length` counts the two bytes after it plus the value. Bit 0 of the control
//! header is set for a command fragment, bit 1 for the last fragment. Other PDU types are
//! still decoded by dicom-ul from the same buffer.
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroize;

use crate::association::WireError;

/// The PDU type of P-DATA-TF.
pub(crate) const P_DATA_TF: u8 = 0x04;

/// The buffers of one association. Each is allocated (zeroed) once, at the largest PDU
/// length we accept, and comes back here when the last [`Fragment`] of its PDU is
/// dropped; at most about `queue_depth + 3` exist at once (the fragments queued for the
/// sink, the one it is reading, the PDU being read). The spares are wiped when the
/// association and the last fragment it handed out are gone.
#[derive(Clone)]
pub(crate) struct PduPool(Arc<Spares>);

struct Spares {
    free: Mutex<Vec<Vec<u8>>>,
    /// Bytes in each buffer: the PDU header plus the largest body we accept.
    size: usize,
}

impl PduPool {
    pub(crate) fn new(max_pdu_length: u32) -> Self {
        PduPool(Arc::new(Spares { free: Mutex::new(Vec::new()), size: 6 + max_pdu_length as usize }))
    }

    fn take(&self) -> Vec<u8> {
        // A poisoned lock only means a thread panicked while pushing or popping a buffer.
        let spare = self.0.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
        spare.unwrap_or_else(|| vec![0u8; self.0.size])
    }

    #[cfg(test)]
    fn spares(&self) -> usize {
        self.0.free.lock().unwrap().len()
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        for buf in self.free.get_mut().unwrap_or_else(PoisonError::into_inner).iter_mut() {
            buf.zeroize();
        }
    }
}

/// One PDU (header included) in a pooled buffer.
pub(crate) struct Pdu {
    buf: Vec<u8>,
    len: usize,
    home: PduPool,
}

impl Pdu {
    /// The PDU's bytes, header included.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn pdu_type(&self) -> u8 {
        self.buf[0]
    }
}

impl Drop for Pdu {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.home.0.free.lock().unwrap_or_else(PoisonError::into_inner).push(buf);
    }
}

/// Reads one whole PDU into a buffer from `pool`. `max_len` (at most the pool's size less
/// the header) bounds the PDU length field: a longer PDU is `TooLarge` and nothing of its
/// body is read.
pub(crate) async fn read_pdu<R: AsyncRead + Unpin>(r: &mut R, pool: &PduPool, max_len: u32) -> Result<Pdu, WireError> {
    let mut header = [0u8; 6];
    r.read_exact(&mut header).await.map_err(|_| WireError::Io)?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if len > max_len || 6 + len as usize > pool.0.size {
        return Err(WireError::TooLarge);
    }
    let mut pdu = Pdu { buf: pool.take(), len: 6 + len as usize, home: pool.clone() };
    pdu.buf[..6].copy_from_slice(&header);
    r.read_exact(&mut pdu.buf[6..pdu.len]).await.map_err(|_| WireError::Io)?;
    Ok(pdu)
}

/// One presentation data value: where it belongs and its bytes.
pub(crate) struct Value {
    pub context: u8,
    pub is_command: bool,
    pub is_last: bool,
    pub data: Fragment,
}

/// A presentation data value's bytes, still in the PDU buffer they arrived in.
pub(crate) struct Fragment {
    pdu: Arc<Pdu>,
    range: Range<usize>,
}

impl Fragment {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.pdu.bytes()[self.range.clone()]
    }

    /// A fragment holding `value`, in a buffer of its own, for tests of its readers.
    #[cfg(test)]
    pub(crate) fn of(value: &[u8]) -> Fragment {
        let pdu = Pdu { buf: value.to_vec(), len: value.len(), home: PduPool::new(0) };
        Fragment { pdu: Arc::new(pdu), range: 0..value.len() }
    }
}

/// Splits a P-DATA-TF PDU into its values. `Malformed` if an item length is below 2 or
/// runs past the PDU, or if the PDU holds no item at all (PS3.8: one or more).
pub(crate) fn values(pdu: Pdu) -> Result<Vec<Value>, WireError> {
    let bytes = pdu.bytes();
    if bytes.len() < 6 || bytes[0] != P_DATA_TF {
        return Err(WireError::Malformed);
    }
    let mut items = Vec::new();
    let mut pos = 6;
    while pos < bytes.len() {
        let Some(&[a, b, c, d, context, control]) = bytes.get(pos..pos + 6) else {
            return Err(WireError::Malformed);
        };
        let item_len = u32::from_be_bytes([a, b, c, d]) as usize;
        let end = (pos + 4).checked_add(item_len).filter(|&e| e <= bytes.len() && item_len >= 2).ok_or(WireError::Malformed)?;
        items.push((context, control, pos + 6..end));
        pos = end;
    }
    if items.is_empty() {
        return Err(WireError::Malformed);
    }
    let pdu = Arc::new(pdu);
    Ok(items
        .into_iter()
        .map(|(context, control, range)| Value {
            context,
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            data: Fragment { pdu: pdu.clone(), range },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdata(items: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (context, control, value) in items {
            body.extend_from_slice(&(value.len() as u32 + 2).to_be_bytes());
            body.push(*context);
            body.push(*control);
            body.extend_from_slice(value);
        }
        let mut pdu = vec![P_DATA_TF, 0];
        pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pdu.extend_from_slice(&body);
        pdu
    }

    async fn read(wire: &[u8], pool: &PduPool) -> Result<Pdu, WireError> {
        let mut r = wire;
        read_pdu(&mut r, pool, 1024).await
    }

    #[tokio::test]
    async fn values_are_the_items_in_order_and_agree_with_dicom_ul() {
        let wire = pdata(&[(1, 0x03, b"command"), (3, 0x00, b"data, not last"), (3, 0x02, b"")]);
        let ours = values(read(&wire, &PduPool::new(1024)).await.unwrap()).unwrap();
        let Ok(Some(dicom_ul::pdu::Pdu::PData { data })) = dicom_ul::read_pdu(&wire[..], 1 << 20, false) else { panic!("dicom-ul refused it") };
        assert_eq!(ours.len(), data.len());
        for (o, d) in ours.iter().zip(&data) {
            assert_eq!(o.context, d.presentation_context_id);
            assert_eq!(o.is_command, d.value_type == dicom_ul::pdu::PDataValueType::Command);
            assert_eq!(o.is_last, d.is_last);
            assert_eq!(o.data.as_slice(), &d.data[..]);
        }
    }

    #[tokio::test]
    async fn fail_malformed_items_are_refused() {
        let pool = PduPool::new(1024);
        let good = pdata(&[(1, 0x02, b"abc")]);
        // Item length 1 (below the two header bytes), then one running past the PDU.
        let mut short = good.clone();
        short[6..10].copy_from_slice(&1u32.to_be_bytes());
        let mut long = good.clone();
        long[6..10].copy_from_slice(&6u32.to_be_bytes());
        // A truncated item header, and a P-DATA-TF with no item.
        let mut stub = good.clone();
        stub.extend_from_slice(&[0, 0, 0]);
        stub[2..6].copy_from_slice(&(good.len() as u32 - 6 + 3).to_be_bytes());
        let empty = vec![P_DATA_TF, 0, 0, 0, 0, 0];
        for wire in [short, long, stub, empty] {
            assert!(matches!(values(read(&wire, &pool).await.unwrap()), Err(WireError::Malformed)));
        }
        assert!(values(read(&good, &pool).await.unwrap()).is_ok());
    }

    #[tokio::test]
    async fn fail_a_pdu_longer_than_allowed_is_too_large() {
        let wire = pdata(&[(1, 0x02, &[7u8; 2000])]);
        assert!(matches!(read(&wire, &PduPool::new(1024)).await, Err(WireError::TooLarge)));
    }

    #[tokio::test]
    async fn buffers_return_to_the_pool_once_every_fragment_is_dropped() {
        let pool = PduPool::new(1024);
        let wire = pdata(&[(1, 0x00, b"first"), (1, 0x02, b"second")]);
        let mut vals = values(read(&wire, &pool).await.unwrap()).unwrap();
        let kept = vals.pop().unwrap();
        drop(vals);
        // One fragment still holds the first PDU's buffer, so the second PDU gets another.
        let second = read(&wire, &pool).await.unwrap();
        assert_eq!(pool.spares(), 0);
        drop(second);
        assert_eq!(pool.spares(), 1);
        assert_eq!(kept.data.as_slice(), b"second");
        drop(kept);
        assert_eq!(pool.spares(), 2);
        // Reading takes a spare rather than allocating.
        let _third = read(&wire, &pool).await.unwrap();
        assert_eq!(pool.spares(), 1);
    }
}
