//! The reference index: which leaves name a resource (a patient's or a study's digest) or
//! an account, so that "who looked at this patient" does not read the whole log.
//!
//! Why. The question an auditor asks most is about one patient or one account, and the log
//! holds every request of every user: tens of millions of entries within a year. Without
//! an index, answering it read every entry (measured at one million entries: 9.3 s for a
//! patient's ten entries; the `audit_log_10m` bench).
//!
//! What it is. A SQLite file next to the log, `refs.sqlite` (format `cleave-audit-refs/1`,
//! FORMAT.md "Reference index"), derived from the entries like the tree files and never
//! trusted beyond that:
//!
//! * A thread follows the log and adds, for each entry, one posting `(key, leaf)` per
//!   resource it names and one for its actor's account, with the number of leading leaves
//!   indexed and the leaf hash of the last one, in the same transaction.
//! * A listing by resource or account reads the postings, then loads each entry through
//!   the log (checked against its leaf hash, and against the whole query), and scans the
//!   leaves the index has not reached yet. A posting that is wrong or added is filtered out
//!   by that check; only a *missing* posting could hide an entry, and the check on opening
//!   (`RefIndex::check`) finds those: the file stores a digest of its postings with a tag
//!   only this log's broker can make (keyed with a key derived from the audit-signing
//!   key), and the postings it holds must have that digest. On a mismatch the index is
//!   emptied and rebuilt. Until then, listings scan.
//! * The file is never fsync'd (`synchronous = OFF`): it is checked on every open anyway,
//!   so a file that power loss left behind or damaged is found like an altered one, and
//!   the log's own appends (on the path every request waits for) do not share the disk
//!   with a second set of syncs. A file that is damaged, of an unknown
//!   format, or indexes leaves this log does not have (its last leaf hash differs) is
//!   emptied and rebuilt from the first entry. Nothing in it is PHI: the keys are the
//!   entries' own resource digests and account names.
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use cleave_keys::Key32;

use crate::entry::Entry;
use crate::merkle::Hash;

/// The file, in the log's directory.
pub(crate) const INDEX_FILE: &str = "refs.sqlite";
const FORMAT: &str = "cleave-audit-refs/1";

/// The key of a resource's postings.
pub(crate) fn resource_key(r: &crate::entry::ResourceRef) -> Vec<u8> {
    r.to_string().into_bytes()
}

/// The key of an account's postings.
pub(crate) fn account_key(name: &str) -> Vec<u8> {
    format!("account:{name}").into_bytes()
}

/// Every key an entry is indexed under.
pub(crate) fn keys_of(e: &Entry) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = e.resources.iter().map(resource_key).collect();
    keys.push(account_key(&e.actor.name));
    keys.sort();
    keys.dedup();
    keys
}

/// An order-independent digest of a set of postings: the sum, modulo 2^256, of each
/// posting's SHA-256. Kept up to date as postings are added and stored under the log's tag,
/// then computed again from the postings in the file: equal, the file holds exactly what
/// was written into it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct PostingsDigest([u64; 4]);

impl PostingsDigest {
    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    fn from_bytes(b: &[u8]) -> Option<PostingsDigest> {
        if b.len() != 32 {
            return None;
        }
        let mut d = PostingsDigest::default();
        for (i, limb) in d.0.iter_mut().enumerate() {
            *limb = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
        }
        Some(d)
    }

    pub(crate) fn add(&mut self, key: &[u8], leaf: u64) {
        let mut h = Sha256::new();
        h.update((key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(leaf.to_be_bytes());
        let d = h.finalize();
        let mut carry = 0u128;
        for (i, limb) in self.0.iter_mut().enumerate() {
            let part = u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let s = u128::from(*limb) + u128::from(part) + carry;
            *limb = s as u64;
            carry = s >> 64;
        }
    }
}

/// The BLAKE3 context that derives the index's tag key from the audit-signing key.
pub(crate) const TAG_CONTEXT: &str = "cleave-audit/1 reference index tag";

/// An open index file.
pub(crate) struct RefIndex {
    conn: Connection,
    /// Keys the tag over (origin, progress, digest): only this log's broker can write one.
    tag_key: Key32,
    origin: String,
    /// The digest of every posting in the file, kept up to date as postings are added.
    digest: PostingsDigest,
}

/// How far an index file has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Leaves `0..indexed` are indexed.
    pub indexed: u64,
    /// The leaf hash of leaf `indexed - 1`, to tell this log's index from another's.
    pub last_leaf: Option<Hash>,
}

impl RefIndex {
    /// Opens the index in `dir`, creating it, or recreating it if it is not a readable
    /// index of the known format. `tag_key` is derived from the log's audit-signing key with [`TAG_CONTEXT`].
    pub(crate) fn open(dir: &Path, origin: &str, tag_key: &Key32) -> Result<RefIndex, rusqlite::Error> {
        let path = dir.join(INDEX_FILE);
        let tag_key = tag_key.duplicate();
        let conn = match Self::open_at(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "audit log: the reference index is unreadable; rebuilding it");
                remove(&path);
                Self::open_at(&path)?
            }
        };
        Ok(RefIndex { conn, tag_key, origin: origin.to_owned(), digest: PostingsDigest::default() })
    }

    fn open_at(path: &Path) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = OFF;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS postings (key BLOB NOT NULL, leaf INTEGER NOT NULL, PRIMARY KEY (key, leaf)) WITHOUT ROWID;",
        )?;
        let format: Option<String> = meta(&conn, "format")?;
        match format.as_deref() {
            Some(FORMAT) => {}
            None => {
                conn.execute("DELETE FROM postings", [])?;
                conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('format', ?1)", [FORMAT])?;
            }
            // Unknown: fail closed (not read), and start again.
            Some(_) => return Err(rusqlite::Error::InvalidQuery),
        }
        Ok(conn)
    }

    /// The tag over what the file claims to hold.
    fn tag(&self, p: &Progress, digest: &PostingsDigest) -> [u8; 32] {
        tag_of(&self.tag_key, &self.origin, p, digest)
    }

    /// Whether the file holds exactly the postings its broker wrote into it: the stored
    /// digest carries this log's tag, and the postings in the file have that digest (a
    /// scan of the postings, not of the entries). From then on the digest is kept as
    /// postings are added. `false`: the caller empties the file.
    pub(crate) fn check(&mut self) -> Result<bool, rusqlite::Error> {
        let p = self.progress()?;
        let stored: Option<Vec<u8>> = meta(&self.conn, "digest")?;
        let tag: Option<Vec<u8>> = meta(&self.conn, "tag")?;
        let (Some(stored), Some(tag)) = (stored, tag) else { return Ok(p.indexed == 0 && self.count()? == 0) };
        let Some(stored) = PostingsDigest::from_bytes(&stored) else { return Ok(false) };
        let want = self.tag(&p, &stored);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &tag[..])) {
            return Ok(false);
        }
        let found = self.digest_of_postings()?;
        if found != stored {
            return Ok(false);
        }
        self.digest = found;
        Ok(true)
    }

    fn count(&self) -> Result<i64, rusqlite::Error> {
        self.conn.query_row("SELECT count(*) FROM postings", [], |r| r.get(0))
    }
    /// How far the file has got.
    pub(crate) fn progress(&self) -> Result<Progress, rusqlite::Error> {
        progress(&self.conn)
    }

    /// Forgets everything: the index starts again from the first leaf.
    pub(crate) fn clear(&mut self) -> Result<(), rusqlite::Error> {
        let empty = PostingsDigest::default();
        let tag = self.tag(&Progress { indexed: 0, last_leaf: None }, &empty);
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM postings", [])?;
        tx.execute("DELETE FROM meta WHERE k IN ('indexed', 'last_leaf')", [])?;
        store_digest(&tx, &empty, &tag)?;
        tx.commit()?;
        self.digest = empty;
        Ok(())
    }

    /// Adds the postings of `entries` (leaves `from..`, in order, the next ones after
    /// [`progress`](Self::progress)) and moves the progress past them, in one transaction.
    /// `last_leaf` is the leaf hash of the last of them.
    pub(crate) fn add(&mut self, from: u64, entries: &[Entry], last_leaf: Hash) -> Result<(), rusqlite::Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut digest = self.digest;
        let tx = self.conn.transaction()?;
        {
            // A plain INSERT: a posting already there means the file is not what the
            // digest says, and the insert fails rather than count it twice.
            let mut ins = tx.prepare_cached("INSERT INTO postings (key, leaf) VALUES (?1, ?2)")?;
            for (i, e) in entries.iter().enumerate() {
                let leaf = from + i as u64;
                for k in keys_of(e) {
                    ins.execute(params![k, leaf as i64])?;
                    digest.add(&k, leaf);
                }
            }
        }
        let p = Progress { indexed: from + entries.len() as u64, last_leaf: Some(last_leaf) };
        tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('indexed', ?1)", [p.indexed as i64])?;
        tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('last_leaf', ?1)", [&last_leaf[..]])?;
        store_digest(&tx, &digest, &tag_of(&self.tag_key, &self.origin, &p, &digest))?;
        tx.commit()?;
        self.digest = digest;
        Ok(())
    }

    /// The digest of every posting in the file.
    fn digest_of_postings(&self) -> Result<PostingsDigest, rusqlite::Error> {
        let mut d = PostingsDigest::default();
        let mut q = self.conn.prepare("SELECT key, leaf FROM postings")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let key: Vec<u8> = r.get(0)?;
            let leaf: i64 = r.get(1)?;
            d.add(&key, leaf as u64);
        }
        Ok(d)
    }
}

/// `BLAKE3-keyed(tag key, format || u64be(len(origin)) || origin || u64be(indexed) ||
/// last_leaf (zeros when none) || digest)`: FORMAT.md, "Reference index".
fn tag_of(key: &Key32, origin: &str, p: &Progress, digest: &PostingsDigest) -> [u8; 32] {
    let mut h = cleave_keys::KeyedHasher::new(key);
    h.update(FORMAT.as_bytes());
    h.update(&(origin.len() as u64).to_be_bytes());
    h.update(origin.as_bytes());
    h.update(&p.indexed.to_be_bytes());
    h.update(&p.last_leaf.unwrap_or([0; 32]));
    h.update(&digest.to_bytes());
    h.finalize()
}

/// Stores a digest and its tag for `p` (inside the caller's transaction).
fn store_digest(tx: &rusqlite::Transaction<'_>, digest: &PostingsDigest, tag: &[u8; 32]) -> Result<(), rusqlite::Error> {
    tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('digest', ?1)", [&digest.to_bytes()[..]])?;
    tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('tag', ?1)", [&tag[..]])?;
    Ok(())
}

/// The value stored under `k` in the `meta` table, if any.
fn meta<T: rusqlite::types::FromSql>(conn: &Connection, k: &str) -> Result<Option<T>, rusqlite::Error> {
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0)).optional()
}

fn progress(conn: &Connection) -> Result<Progress, rusqlite::Error> {
    let indexed: Option<i64> = meta(conn, "indexed")?;
    let last: Option<Vec<u8>> = meta(conn, "last_leaf")?;
    let last_leaf = match last {
        Some(b) => Some(<Hash>::try_from(b.as_slice()).map_err(|_| rusqlite::Error::InvalidQuery)?),
        None => None,
    };
    let indexed = u64::try_from(indexed.unwrap_or(0)).map_err(|_| rusqlite::Error::InvalidQuery)?;
    if (indexed > 0) != last_leaf.is_some() {
        return Err(rusqlite::Error::InvalidQuery);
    }
    Ok(Progress { indexed, last_leaf })
}

/// The query side: a read-only connection, for listings.
pub(crate) struct IndexReader {
    conn: Connection,
}

impl IndexReader {
    /// `None` when there is no usable index file yet (the listing then scans).
    pub(crate) fn open(dir: &Path) -> Option<IndexReader> {
        let path = dir.join(INDEX_FILE);
        if !path.exists() {
            return None;
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX).ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
        Some(IndexReader { conn })
    }

    /// Within one read transaction: how far the index has got, and the first `limit`
    /// leaves at or after `start` (and below that point) indexed under `key`.
    pub(crate) fn postings(&mut self, key: &[u8], start: u64, limit: usize) -> Result<(Progress, Vec<u64>), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        let format: Option<String> = meta(&tx, "format")?;
        if format.as_deref() != Some(FORMAT) {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let p = progress(&tx)?;
        let leaves = {
            let mut q = tx.prepare_cached("SELECT leaf FROM postings WHERE key = ?1 AND leaf >= ?2 AND leaf < ?3 ORDER BY leaf LIMIT ?4")?;
            let rows = q.query_map(params![key, start as i64, p.indexed as i64, limit as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|l| l as u64)).collect::<Result<Vec<_>, _>>()?
        };
        tx.finish()?;
        Ok((p, leaves))
    }
}

/// Removes the index file and SQLite's companions of it.
pub(crate) fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Actor, ActorKind, Operation, Outcome};

    #[test]
    fn a_file_reopened_as_written_passes_the_check_and_no_other_does() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key32::from_bytes(&mut [7; 32]);
        let entries: Vec<Entry> =
            (0..10u8).map(|i| Entry::new(Actor::new(ActorKind::Staff, format!("u{i}")), Operation::Login, Outcome::Allowed)).collect();
        {
            let mut ix = RefIndex::open(dir.path(), "o", &key).unwrap();
            assert!(ix.check().unwrap(), "a new file");
            ix.add(0, &entries[..4], [3; 32]).unwrap();
            ix.add(4, &entries[4..], [9; 32]).unwrap();
        }
        let mut ix = RefIndex::open(dir.path(), "o", &key).unwrap();
        assert!(ix.check().unwrap(), "reopened as written: used, not rebuilt");
        assert_eq!(ix.progress().unwrap(), Progress { indexed: 10, last_leaf: Some([9; 32]) });
        // Tagged under another log's key, or another origin: not this log's.
        assert!(!RefIndex::open(dir.path(), "o", &Key32::from_bytes(&mut [8; 32])).unwrap().check().unwrap());
        assert!(!RefIndex::open(dir.path(), "p", &key).unwrap().check().unwrap());
        // Postings removed or added.
        ix.conn.execute("DELETE FROM postings WHERE leaf = 3", []).unwrap();
        assert!(!ix.check().unwrap());
        ix.clear().unwrap();
        assert!(ix.check().unwrap(), "emptied, it is a valid empty index");
        ix.add(0, &entries, [9; 32]).unwrap();
        ix.conn.execute("INSERT INTO postings (key, leaf) VALUES (x'00', 1)", []).unwrap();
        assert!(!ix.check().unwrap());
    }

    #[test]
    fn the_digest_is_order_independent_and_sees_each_posting() {
        let mut a = PostingsDigest::default();
        a.add(b"k1", 1);
        a.add(b"k2", 2);
        let mut b = PostingsDigest::default();
        b.add(b"k2", 2);
        b.add(b"k1", 1);
        assert_eq!(a, b);
        let mut c = PostingsDigest::default();
        c.add(b"k1", 1);
        assert_ne!(a, c, "a missing posting changes it");
        let mut d = PostingsDigest::default();
        d.add(b"k1", 1);
        d.add(b"k2", 3);
        assert_ne!(a, d, "a posting moved to another leaf changes it");
        // Length-prefixed: ("k", leaf) and ("k" + leaf bytes...) cannot collide by shifting.
        let mut e = PostingsDigest::default();
        e.add(b"k12", 2);
        assert_ne!(e, b);
    }
}
