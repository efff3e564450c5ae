//! A blob written while one value in it is not yet known: [`PendingBlob`].
//!
//! Why. An instance arriving over the network names its patient in its header, but the
//! pseudonym that replaces that name is only decided by the identity vault, and the vault
//! must not be written until the whole object has arrived and checked out (a truncated
//! pixel stream is only seen at its end). Writing the de-identified object only after that
//! meant receiving it into a spool, then de-identifying and encrypting it a second time:
//! two passes over every byte, and the whole blob still to reach the disk after the last
//! byte arrived. A `PendingBlob` takes the object in one pass while it arrives, with a
//! *marker* (a random string of the pseudonym's exact length, unguessable by the sender)
//! where the pseudonym will go, and puts the real pseudonym in at [`PendingBlob::finish`].
//!
//! How, without ever sealing a chunk twice. Chunks are sealed under nonces fixed by their
//! position, so a chunk sealed with the marker could not be sealed again with the
//! pseudonym without reusing its nonce. Instead every chunk is checked for the marker
//! before it is sealed (with a look-ahead of the marker's length less one byte, so a marker
//! that straddles two chunks is seen in the first): a chunk without it is sealed and written
//! at once; a chunk with it (and the chunk a straddling marker runs into) is kept in memory,
//! zeroized on drop, and its place in the file filled with zeros. At `finish` the kept
//! chunks and the final chunk have every marker replaced, are sealed exactly once, and are
//! written into their places. The file is then byte for byte the blob the ordinary writer
//! would have produced for the replaced plaintext (a test checks this), so the format
//! (`FORMAT.md`) does not change.
//!
//! Memory: one chunk plus look-ahead, plus the chunks holding a marker (in an instance,
//! the chunk holding Patient ID, rarely two), capped at [`MAX_KEPT_CHUNKS`].
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cleave_keys::{durable, VersionedKey, WipedBuf};
use memchr::memmem;
use zeroize::Zeroizing;

use super::{BlobId, ChunkSealer, Header, WrittenBlob, DEFAULT_CHUNK_SIZE, HEADER_LEN, TAG_LEN, VERSION_2};
use crate::Error;

/// Chunks that may be kept in memory because they hold the marker. An instance holds its
/// pseudonym once or a few times; a thousand would mean something is generating markers.
pub(crate) const MAX_KEPT_CHUNKS: usize = 256;

/// Where a pending blob's bytes go while it is written, and the chunk logic above.
pub(super) struct MarkedEncoder {
    out: BlobFile,
    cipher: ChunkSealer,
    marker: Zeroizing<Vec<u8>>,
    finder: memmem::Finder<'static>,
    chunk_size: usize,
    /// Plaintext not yet sealed: the current chunk and up to `marker.len() - 1` bytes of
    /// look-ahead.
    buf: WipedBuf,
    /// Index of the chunk at the start of `buf`.
    index: u32,
    /// A marker begun in the previous chunk runs into this one.
    carry: bool,
    /// Chunks kept back, in index order, with their plaintext.
    pub(super) kept: Vec<(u32, WipedBuf)>,
    plaintext_len: u64,
    poisoned: bool,
}

/// How much written data may wait in the page cache before its writeback is started.
const WRITEBACK_STEP: u64 = 256 * 1024;

/// The blob file, written front to back, with its writeback started as it grows.
struct BlobFile {
    file: File,
    /// Bytes written so far, and up to where the kernel was asked to write them out.
    written: u64,
    advised: u64,
}

impl BlobFile {
    /// Appends to the file, starting the disk writes of what is written as it goes.
    ///
    /// Why: the instance is acknowledged only once its blob is fsync'd, and the sender
    /// waits for that. Left to itself the kernel writes nothing back for many seconds, so
    /// the fsync after the last byte would write the whole blob while the sender waits.
    /// [`cleave_keys::durable::start_writeback`] on written ranges makes Linux start their
    /// writeback now, so the final fsync mostly finds them already on disk. A hint: its
    /// failure changes nothing.
    fn append(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(Error::io("writing a blob chunk to", Path::new("the blob file"), std::io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    IoSlice::advance_slices(&mut rest, n);
                    self.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("writing a blob chunk to", Path::new("the blob file"), e)),
            }
        }
        if self.written - self.advised >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts the disk writes of everything written and not yet advised, without waiting.
    fn start_writeback(&mut self) {
        if let Some(len) = std::num::NonZeroU64::new(self.written - self.advised) {
            cleave_keys::durable::start_writeback(&self.file, self.advised, len.get());
            self.advised = self.written;
        }
    }
}

impl MarkedEncoder {
    fn lookahead(&self) -> usize {
        self.marker.len() - 1
    }

    fn chunk_offset(&self, index: u32) -> u64 {
        HEADER_LEN as u64 + u64::from(index) * (self.chunk_size + TAG_LEN) as u64
    }

    /// Seals (or keeps) the chunk at the start of `buf`. It is followed by more data (the
    /// look-ahead, or at `finish` the rest), so it is not the final chunk.
    fn emit_full(&mut self) -> Result<(), Error> {
        let c = self.chunk_size;
        // Markers starting in this chunk; one starting in the look-ahead belongs to the next.
        let mut keep = self.carry;
        let mut carry = false;
        for start in self.finder.find_iter(&self.buf[..]).take_while(|&s| s < c) {
            keep = true;
            carry |= start + self.marker.len() > c;
        }
        if keep {
            if self.kept.len() >= MAX_KEPT_CHUNKS {
                return Err(Error::InvalidInput { field: "blob", rule: "the pseudonym marker appears in too many places" });
            }
            self.kept.push((self.index, WipedBuf::from_vec(self.buf[..c].to_vec())));
            // Its place in the file, filled in at `finish`.
            self.out.append(&[&vec![0u8; c + TAG_LEN]])?;
        } else {
            // Sealed where it lies: the look-ahead after it stays plaintext.
            let tag = self.cipher.seal_detached(self.index, false, &mut self.buf[..c]);
            self.out.append(&[&self.buf[..c], &tag])?;
        }
        self.carry = carry;
        self.buf.drain(..c);
        self.index = self.index.checked_add(1).ok_or(Error::BlobTooLarge)?;
        Ok(())
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::WriterPoisoned);
        }
        let full = self.chunk_size + self.lookahead();
        while !data.is_empty() {
            let take = (full - self.buf.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.buf.extend_from_slice(head);
            self.plaintext_len += take as u64;
            data = rest;
            if self.buf.len() == full {
                if let Err(e) = self.emit_full() {
                    self.poisoned = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Replaces the markers, seals the kept and final chunks and writes them into place,
    /// then the sealed `record` after the final chunk. Returns the file, the plaintext
    /// length and how many markers were replaced.
    fn finish(mut self, replacement: &[u8], record: &[u8]) -> Result<(File, u64, usize), Error> {
        if self.poisoned {
            return Err(Error::WriterPoisoned);
        }
        if replacement.len() != self.marker.len() {
            return Err(Error::InvalidInput { field: "pseudonym", rule: "it must have exactly the length of the marker it replaces" });
        }
        // What is left: possibly one more full chunk, then the final chunk (never empty
        // after full ones, as the ordinary encoder guarantees).
        if self.buf.len() > self.chunk_size {
            self.emit_full()?;
        }
        let final_index = self.index;
        let last = std::mem::take(&mut self.buf);
        let record_at = self.chunk_offset(final_index) + (last.len() + TAG_LEN) as u64;
        self.kept.push((final_index, last));

        // Replace within each run of consecutive kept chunks, so a marker that straddles
        // two chunks is replaced whole.
        let mut replaced = 0usize;
        let mut i = 0;
        while i < self.kept.len() {
            let mut j = i + 1;
            while j < self.kept.len() && self.kept[j].0 == self.kept[j - 1].0 + 1 {
                j += 1;
            }
            let mut joined = WipedBuf::with_capacity(self.kept[i..j].iter().map(|(_, p)| p.len()).sum());
            for (_, plain) in &self.kept[i..j] {
                joined.extend_from_slice(plain);
            }
            let starts: Vec<usize> = self.finder.find_iter(&joined[..]).collect();
            for s in starts {
                joined[s..s + replacement.len()].copy_from_slice(replacement);
                replaced += 1;
            }
            // Each chunk of the run, now with the pseudonym, sealed once into its place.
            let mut at = 0;
            for &(index, ref plain) in &self.kept[i..j] {
                let n = plain.len();
                let mut sealed = WipedBuf::with_capacity(n + TAG_LEN);
                sealed.extend_from_slice(&joined[at..at + n]);
                at += n;
                self.cipher.seal(index, index == final_index, &mut sealed);
                self.out
                    .file
                    .write_all_at(&sealed, self.chunk_offset(index))
                    .map_err(|e| Error::io("writing a blob chunk to", Path::new("the blob file"), e))?;
            }
            i = j;
        }
        let sealed = self.cipher.seal_record(record)?;
        self.out
            .file
            .write_all_at(&sealed, record_at)
            .map_err(|e| Error::io("writing the record to", Path::new("the blob file"), e))?;
        Ok((self.out.file, self.plaintext_len, replaced))
    }
}

/// One blob written in a single pass while a value in it (the pseudonym) is still unknown.
///
/// Created by [`crate::ClinicalStore::begin_instance`]; written through `std::io::Write`
/// with the marker where the value goes; committed by
/// [`crate::ClinicalStore::commit_instance`], which files it. Unlike [`crate::BlobWriter`]
/// it writes under the blob's own name (no rename: one journal commit less for the sender
/// to wait for), but no index row names the file until it is durable, so nothing reads it
/// before; dropped unfinished it deletes the file, and after a crash the store's sweep
/// does (a file cut short has no final chunk and no record).
pub struct PendingBlob {
    pub(super) enc: Option<MarkedEncoder>,
    /// The blob's own name: written in place (see `create_with`). Emptied once finished.
    dest: PathBuf,
    pub(crate) id: BlobId,
}

impl std::fmt::Debug for PendingBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingBlob")
    }
}

impl PendingBlob {
    pub(crate) fn create(dest: PathBuf, key: &VersionedKey, id: BlobId, marker: &[u8]) -> Result<PendingBlob, Error> {
        Self::create_with(dest, key, id, marker, DEFAULT_CHUNK_SIZE, None)
    }

    /// `blob_nonce` fixed: for tests comparing against the ordinary encoder.
    pub(crate) fn create_with(dest: PathBuf, key: &VersionedKey, id: BlobId, marker: &[u8], chunk_size: u32, blob_nonce: Option<[u8; 32]>) -> Result<PendingBlob, Error> {
        // The marker must not be able to overlap itself (so replacements never collide) and
        // must be long enough not to occur by chance.
        if marker.len() < 16 || marker.len() > 64 || (1..marker.len()).any(|k| marker[..k] == marker[marker.len() - k..]) {
            return Err(Error::InvalidInput { field: "marker", rule: "16 to 64 bytes, with no prefix that is also a suffix" });
        }
        // Written under its own name, not a temporary one renamed at the end: a rename is
        // one more journal commit the sender would wait for. Nothing reads a blob that no
        // index row names, the index row is committed only after this file is durable, and
        // an unfinished file left by a crash is removed by the sweep when the store next
        // opens.
        let mut file = durable::create_new_with_mode(&dest, 0o600).map_err(|e| Error::io("creating", &dest, e))?;
        // From here on the Drop impl removes the file on any failure.
        let mut w = PendingBlob { enc: None, dest, id };
        let blob_nonce = blob_nonce.unwrap_or_else(|| {
            let mut n = [0u8; 32];
            cleave_keys::random_bytes(&mut n);
            n
        });
        let header = Header { version: VERSION_2, key_version: key.version, chunk_size, blob_nonce };
        file.write_all(&header.encode()).map_err(|e| Error::io("writing the header of", &w.dest, e))?;
        let marker = Zeroizing::new(marker.to_vec());
        let finder = memmem::Finder::new(&marker[..]).into_owned();
        let c = chunk_size as usize;
        w.enc = Some(MarkedEncoder {
            out: BlobFile { file, written: HEADER_LEN as u64, advised: 0 },
            cipher: ChunkSealer::new(&key.key, &header, id),
            finder,
            buf: WipedBuf::with_capacity(c + marker.len()),
            marker,
            chunk_size: c,
            index: 0,
            carry: false,
            kept: Vec::new(),
            plaintext_len: 0,
            poisoned: false,
        });
        Ok(w)
    }

    /// Starts the writeback of everything sealed so far, without waiting for it, while
    /// the pseudonym is still unknown. Optional: [`PendingBlob::finish`] makes everything
    /// durable anyway. Called while the vault is still deciding, it leaves `finish` one
    /// fsync of the file, most of whose data is already on its way.
    ///
    /// Why not fsync the data here too: waiting for it, then for `finish`'s fsync of the
    /// held chunks, put two disk round trips on the sender's path instead of one. Why not
    /// the directory (as this did until session 6): its fsync had to commit the journal
    /// transaction holding the new entry, a disk round trip of its own (median 154 µs
    /// under storescu); after the file's fsync, which commits that same transaction on
    /// ext4, it costs next to nothing (bench/README.md, "C-STORE").
    pub fn prepare_finish(&mut self) -> Result<(), Error> {
        let enc = self.enc.as_mut().ok_or(Error::WriterPoisoned)?;
        enc.out.start_writeback();
        Ok(())
    }

    /// Puts `meta`'s pseudonym where every marker is, seals what was kept back, seals
    /// `meta` as the blob's record (FORMAT.md, "The record"), and fsyncs the file and its
    /// directory. From then on the blob alone is enough to file the instance again should
    /// a power cut lose its index row. Takes no lock on the store: call it before
    /// [`crate::ClinicalStore::commit_instance`], which only writes the index row.
    ///
    /// Fails if `meta` breaks a rule of the index, if its pseudonym is not exactly as long
    /// as the marker, or if the marker was never written (an object that does not name its
    /// patient was not de-identified by the caller's pipeline). The file is then removed.
    pub fn finish(self, meta: crate::InstanceMeta) -> Result<FinishedBlob, Error> {
        crate::store::validate_meta(&meta)?;
        let record = meta.to_record();
        self.finish_with_record(meta, &record)
    }

    /// [`PendingBlob::finish`] with the record given as bytes (the tests seal records of
    /// their own); `meta` gives the pseudonym and goes to the index row.
    pub(crate) fn finish_with_record(mut self, meta: crate::InstanceMeta, record: &[u8]) -> Result<FinishedBlob, Error> {
        let enc = self.enc.take().ok_or(Error::WriterPoisoned)?;
        let (file, plaintext_len, replaced) = enc.finish(meta.pseudonym.as_bytes(), record)?;
        if replaced == 0 {
            return Err(Error::InvalidInput { field: "instance", rule: "the pseudonym marker was never written, so the object does not name its patient" });
        }
        // The file, then its directory entry (the name never changes after creation). In
        // this order the second is nearly free: see `prepare_finish`.
        file.sync_all().map_err(|e| Error::io("syncing", &self.dest, e))?;
        drop(file);
        let dir = self.dest.parent().unwrap_or(Path::new("."));
        durable::fsync_dir(dir).map_err(|e| Error::io("syncing", dir, e))?;
        Ok(FinishedBlob { id: self.id, dest: std::mem::take(&mut self.dest), written: WrittenBlob { plaintext_len }, meta })
    }
}

/// A pending blob with its pseudonym in place, durable under its own name, waiting for its
/// index row. Dropped without [`crate::ClinicalStore::commit_instance`] succeeding, it
/// deletes its file. Left by a crash, it is whole and holds its record, so the sweep at the
/// next start files it (its sender, never answered, will find it already stored).
pub struct FinishedBlob {
    pub(crate) id: BlobId,
    dest: PathBuf,
    pub(crate) written: WrittenBlob,
    /// What the record holds, for the index row.
    pub(crate) meta: crate::InstanceMeta,
}

impl std::fmt::Debug for FinishedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinishedBlob")
    }
}

impl FinishedBlob {
    /// The index row now refers to the file: keep it.
    pub(crate) fn keep(mut self) {
        self.dest = PathBuf::new();
    }
}

impl Drop for FinishedBlob {
    fn drop(&mut self) {
        if !self.dest.as_os_str().is_empty() {
            crate::store::remove_blob(&self.dest);
        }
    }
}

impl Write for PendingBlob {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.enc.as_mut() {
            Some(enc) => {
                enc.push(data)?;
                Ok(data.len())
            }
            None => Err(Error::WriterPoisoned.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        self.enc = None;
        if !self.dest.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.dest);
        }
    }
}
