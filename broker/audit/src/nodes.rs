//! The log's Merkle tree on disk, so that opening a log reads its tail, not its history.
//!
//! Why. Rebuilding the tree from every record on open took 84 s at ten million entries,
//! and holding it took about 72 MB of memory per million entries: a hospital's log reaches
//! that size in weeks, and the broker cannot serve before its audit log is open. Now the
//! tree's hashes live in `tree.nodes`, each record's place in `entries.log` in
//! `tree.offsets`, and memory holds only the O(log n) hashes on the tree's right edge.
//!
//! Both files are *derived*: everything in them follows from `entries.log`. They are written
//! with each batch, before the batch's entries are synced, and are themselves synced when a
//! checkpoint is issued; then `tree.json` records the size up to which they are durable.
//! Opening trusts them up to that size only if the root they give equals the signed
//! checkpoint of that size and the last record they point at is intact; otherwise it
//! rebuilds them from the entries. A background pass then re-derives them from every record
//! and compares (`log.rs`), so a damaged or rewritten file is still found. Layout in
//! `FORMAT.md`, "Tree files".
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cleave_keys::durable;
use serde::{Deserialize, Serialize};

use crate::merkle::{node_hash, Hash, Nodes};
use crate::Error;

pub(crate) const NODES_FILE: &str = "tree.nodes";
pub(crate) const OFFSETS_FILE: &str = "tree.offsets";
pub(crate) const CHECKPOINT_INDEX_FILE: &str = "tree.checkpoints";
pub(crate) const TREE_META_FILE: &str = "tree.json";
const TREE_FORMAT: &str = "cleave-audit-tree/1";
const HASH_LEN: u64 = 32;
const OFFSET_LEN: u64 = 8;

/// Where node (`level`, `index`) is in `tree.nodes`, counted in hashes: nodes are stored in
/// post-order, each leaf followed by the subtrees it completes, lowest first. The last leaf
/// under the node is `j = (index + 1) * 2^level - 1`; before it come `2j - popcount(j)`
/// nodes, then the leaf and its `level` ancestors.
pub(crate) fn position(level: u32, index: u64) -> u64 {
    let j = ((index + 1) << level) - 1;
    2 * j - u64::from(j.count_ones()) + u64::from(level)
}

/// Nodes stored for a tree of `leaves` leaves.
pub(crate) fn node_count(leaves: u64) -> u64 {
    2 * leaves - u64::from(leaves.count_ones())
}

/// `tree.json`: the tree files are durable and right for the first `size` entries, whose
/// records end at byte `end` of `entries.log`, and for the first `checkpoints` checkpoints,
/// whose records end at byte `checkpoints_end` of `checkpoints.log`; the last of those
/// checkpoints is of `size` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub size: u64,
    pub end: u64,
    pub checkpoints: u64,
    pub checkpoints_end: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    format: String,
    size: u64,
    end: u64,
    checkpoints: u64,
    checkpoints_end: u64,
}

/// The peaks of the tree: for every set bit `k` of the size, the hash of the complete
/// subtree of `2^k` leaves on the right edge.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peaks {
    size: u64,
    by_level: Vec<Hash>,
}

impl Peaks {
    /// Add one leaf; calls `emit` with the leaf and every subtree it completes, in the order
    /// they are stored.
    pub(crate) fn push(&mut self, leaf: Hash, mut emit: impl FnMut(&Hash)) {
        emit(&leaf);
        let mut cur = leaf;
        let mut k = 0usize;
        while self.size >> k & 1 == 1 {
            cur = node_hash(&self.by_level[k], &cur);
            emit(&cur);
            k += 1;
        }
        if self.by_level.len() <= k {
            self.by_level.resize(k + 1, [0; 32]);
        }
        self.by_level[k] = cur;
        self.size += 1;
    }

    /// The root of the leaves pushed so far: the peaks folded from the right.
    pub(crate) fn root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for k in 0..self.by_level.len() {
            if self.size >> k & 1 == 1 {
                acc = Some(match acc {
                    None => self.by_level[k],
                    Some(right) => node_hash(&self.by_level[k], &right),
                });
            }
        }
        acc.unwrap_or_else(crate::merkle::empty_root)
    }
}

/// A batch of leaves planned against the current tree, to be written then published.
pub(crate) struct Planned {
    nodes: Vec<u8>,
    offsets: Vec<u8>,
    peaks: Peaks,
    end: u64,
}

/// One derived file, shared by the log and its [`Syncer`]; every error names it.
#[derive(Clone)]
struct Derived {
    file: Arc<File>,
    path: PathBuf,
}

impl Derived {
    fn open(dir: &Path, name: &str) -> Result<Derived, Error> {
        let path = dir.join(name);
        if !path.exists() {
            durable::create_new_with_mode(&path, 0o600).map_err(|e| Error::io("create", &path, e))?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| Error::io("open", &path, e))?;
        Ok(Derived { file: Arc::new(file), path })
    }

    fn len(&self) -> Result<u64, Error> {
        self.file.metadata().map(|m| m.len()).map_err(|e| Error::io("stat", &self.path, e))
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        self.file.set_len(len).map_err(|e| Error::io("truncate", &self.path, e))
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<(), Error> {
        self.file.write_all_at(bytes, at).map_err(|e| Error::io("write", &self.path, e))
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, at).map_err(|e| Error::io("read", &self.path, e))
    }

    fn sync(&self) -> Result<(), Error> {
        self.file.sync_data().map_err(|e| Error::io("sync", &self.path, e))
    }

    /// A reader from the start with a file position of its own.
    fn stream(&self) -> Result<std::io::BufReader<File>, Error> {
        let file = File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        Ok(std::io::BufReader::with_capacity(1 << 20, file))
    }
}

/// The tree files of an open log, and the published size readers may use.
pub(crate) struct TreeFiles {
    nodes: Derived,
    offsets: Derived,
    /// `tree.checkpoints`: one `u64be` per checkpoint, its record's offset in
    /// `checkpoints.log`.
    cps: Derived,
    meta_path: PathBuf,
    peaks: Peaks,
    /// Byte offset in `entries.log` just after the last published record.
    end: u64,
}

impl TreeFiles {
    /// Opens (or creates) the files in `dir`, and reads the mark, if there is a usable one.
    /// The tree is empty until [`reset_to`](Self::reset_to).
    pub(crate) fn open(dir: &Path) -> Result<(TreeFiles, Option<Mark>), Error> {
        let (nodes, offsets, cps) =
            (Derived::open(dir, NODES_FILE)?, Derived::open(dir, OFFSETS_FILE)?, Derived::open(dir, CHECKPOINT_INDEX_FILE)?);
        let meta_path = dir.join(TREE_META_FILE);
        // A missing, unreadable or unknown mark means: trust nothing, rebuild. The files are
        // derived, so rebuilding is always possible and never loses anything.
        let mark = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MetaFile>(&b).ok())
            .filter(|m| m.format == TREE_FORMAT)
            .map(|m| Mark { size: m.size, end: m.end, checkpoints: m.checkpoints, checkpoints_end: m.checkpoints_end });
        let files = TreeFiles { nodes, offsets, cps, meta_path, peaks: Peaks::default(), end: 0 };
        Ok((files, mark))
    }

    /// Whether the files hold at least the first `size` leaves.
    pub(crate) fn holds(&self, size: u64) -> Result<bool, Error> {
        Ok(self.nodes.len()? >= node_count(size) * HASH_LEN && self.offsets.len()? >= size * OFFSET_LEN)
    }

    /// Whether the checkpoint index holds at least `count` offsets.
    pub(crate) fn holds_checkpoints(&self, count: u64) -> Result<bool, Error> {
        Ok(self.cps.len()? >= count * OFFSET_LEN)
    }

    /// Keep the offsets of the first `count` checkpoints, drop the rest.
    pub(crate) fn reset_checkpoints(&self, count: u64) -> Result<(), Error> {
        self.cps.set_len(count * OFFSET_LEN)
    }

    /// Record where checkpoint `seq` is in `checkpoints.log`.
    pub(crate) fn put_checkpoint(&self, seq: u64, offset: u64) -> Result<(), Error> {
        self.put_checkpoints(seq, &offset.to_be_bytes())
    }

    /// Record the places of checkpoints from `first` on: `run` is their `u64be` offsets.
    pub(crate) fn put_checkpoints(&self, first: u64, run: &[u8]) -> Result<(), Error> {
        self.cps.write_at(run, first * OFFSET_LEN)
    }

    /// Where checkpoint `seq` is in `checkpoints.log`.
    pub(crate) fn checkpoint_offset(&self, seq: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.cps.read_at(&mut b, seq * OFFSET_LEN)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Keep the first `size` leaves (whose records end at `end`), drop anything after them,
    /// and load the peaks. `size` must be at most what [`holds`](Self::holds) allows.
    pub(crate) fn reset_to(&mut self, size: u64, end: u64) -> Result<(), Error> {
        self.nodes.set_len(node_count(size) * HASH_LEN)?;
        self.offsets.set_len(size * OFFSET_LEN)?;
        let mut peaks = Peaks { size, by_level: vec![[0; 32]; 64 - size.leading_zeros() as usize] };
        for k in 0..peaks.by_level.len() {
            if size >> k & 1 == 1 {
                peaks.by_level[k] = self.read_node(k as u32, (size >> k) - 1)?;
            }
        }
        self.peaks = peaks;
        self.end = end;
        Ok(())
    }

    /// Number of published leaves.
    pub(crate) fn size(&self) -> u64 {
        self.peaks.size
    }

    /// Byte offset just after the last published record.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// The root of the whole published tree, from the peaks alone.
    pub(crate) fn current_root(&self) -> Hash {
        self.peaks.root()
    }

    /// Computes what appending `leaves` (leaf hash, record offset) adds to both files;
    /// `end` is the byte offset after the last of their records.
    pub(crate) fn plan(&self, leaves: &[(Hash, u64)], end: u64) -> Planned {
        let mut peaks = self.peaks.clone();
        let mut nodes = Vec::with_capacity(leaves.len() * 64 + 64);
        let mut offsets = Vec::with_capacity(leaves.len() * 8);
        for (leaf, offset) in leaves {
            peaks.push(*leaf, |h| nodes.extend_from_slice(h));
            offsets.extend_from_slice(&offset.to_be_bytes());
        }
        Planned { nodes, offsets, peaks, end }
    }

    /// Writes a planned batch after the published tree. Readers do not see it until
    /// [`publish`](Self::publish).
    pub(crate) fn write(&self, p: &Planned) -> Result<(), Error> {
        self.nodes.write_at(&p.nodes, node_count(self.peaks.size) * HASH_LEN)?;
        self.offsets.write_at(&p.offsets, self.peaks.size * OFFSET_LEN)
    }

    pub(crate) fn publish(&mut self, p: Planned) {
        self.peaks = p.peaks;
        self.end = p.end;
    }

    /// Handles for [`sync_and_mark`] that do not hold the log's state lock while syncing.
    pub(crate) fn syncer(&self) -> Syncer {
        Syncer { files: [self.nodes.clone(), self.offsets.clone(), self.cps.clone()], meta_path: self.meta_path.clone() }
    }

    fn read_node(&self, level: u32, index: u64) -> Result<Hash, Error> {
        let mut h = [0u8; 32];
        self.nodes.read_at(&mut h, position(level, index) * HASH_LEN)?;
        Ok(h)
    }

    /// Leaf hashes `start..end` (within the published tree), in one read.
    pub(crate) fn leaves(&self, start: u64, end: u64) -> Result<Vec<Hash>, Error> {
        if start >= end {
            return Ok(Vec::new());
        }
        let (first, last) = (position(0, start), position(0, end - 1));
        let mut span = vec![0u8; ((last - first + 1) * HASH_LEN) as usize];
        self.nodes.read_at(&mut span, first * HASH_LEN)?;
        Ok((start..end)
            .map(|i| {
                let at = ((position(0, i) - first) * HASH_LEN) as usize;
                let mut h = [0u8; 32];
                h.copy_from_slice(&span[at..at + 32]);
                h
            })
            .collect())
    }

    /// The byte offsets of records `start..end` in `entries.log`, followed by the offset
    /// just after record `end - 1`.
    pub(crate) fn record_offsets(&self, start: u64, end: u64) -> Result<Vec<u64>, Error> {
        let read_to = (end + 1).min(self.size());
        let mut raw = vec![0u8; (read_to.saturating_sub(start) * OFFSET_LEN) as usize];
        self.offsets.read_at(&mut raw, start * OFFSET_LEN)?;
        let mut out: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        if end >= self.size() {
            out.push(self.end);
        }
        Ok(out)
    }

    /// Sequential readers over `tree.nodes`, `tree.offsets` and `tree.checkpoints` from
    /// the start, for the background check. Opened afresh: they share no file position with
    /// the log's own handles.
    pub(crate) fn stream(&self) -> Result<Streams, Error> {
        Ok(Streams { nodes: self.nodes.stream()?, offsets: self.offsets.stream()?, checkpoints: self.cps.stream()? })
    }
}

/// The tree files read front to back.
pub(crate) struct Streams {
    pub nodes: std::io::BufReader<File>,
    pub offsets: std::io::BufReader<File>,
    pub checkpoints: std::io::BufReader<File>,
}

impl Nodes for TreeFiles {
    type Error = Error;

    fn leaf_count(&self) -> u64 {
        self.size()
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, Error> {
        self.read_node(level, index)
    }
}

/// Syncs the tree files and records how far they are durable.
pub(crate) struct Syncer {
    files: [Derived; 3],
    meta_path: PathBuf,
}

impl Syncer {
    /// Makes the files durable, then writes `mark` (atomically). The files may already hold
    /// more than `mark` covers: opening cuts what the mark does not vouch for.
    pub(crate) fn sync_and_mark(&self, mark: Mark) -> Result<(), Error> {
        for f in &self.files {
            f.sync()?;
        }
        let meta = MetaFile {
            format: TREE_FORMAT.into(),
            size: mark.size,
            end: mark.end,
            checkpoints: mark.checkpoints,
            checkpoints_end: mark.checkpoints_end,
        };
        let bytes = serde_json::to_vec(&meta).map_err(|_| Error::UnknownFormat(self.meta_path.clone()))?;
        durable::write_atomic(&self.meta_path, &bytes, 0o600).map_err(|e| Error::io("write", &self.meta_path, e))
    }

    /// Withdraws the mark, so the next open rebuilds the files from the entries.
    pub(crate) fn unmark(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.meta_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &self.meta_path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};

    #[test]
    fn positions_are_post_order() {
        // Leaves 0..8 and their subtrees, in the order Peaks::push emits them.
        let order = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4), (0, 5), (1, 2), (0, 6), (0, 7), (1, 3), (2, 1), (3, 0)];
        for (pos, (level, index)) in order.iter().enumerate() {
            assert_eq!(position(*level, *index), pos as u64, "({level}, {index})");
        }
        assert_eq!((node_count(0), node_count(1), node_count(3), node_count(8)), (0, 1, 4, 15));
    }

    #[test]
    fn stored_nodes_match_the_in_memory_tree_at_every_size() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, mark) = TreeFiles::open(dir.path()).unwrap();
        assert_eq!(mark, None);
        files.reset_to(0, 7).unwrap();
        let mut tree = Tree::new();
        let mut n = 0u64;
        // Batches of uneven sizes, and a reopen in the middle.
        for batch in [1usize, 2, 5, 1, 13, 8, 40] {
            let leaves: Vec<(Hash, u64)> = (0..batch as u64).map(|i| (leaf_hash(format!("e{}", n + i).as_bytes()), 100 * (n + i))).collect();
            let plan = files.plan(&leaves, 100 * (n + batch as u64));
            files.write(&plan).unwrap();
            files.publish(plan);
            for (h, _) in &leaves {
                tree.push_leaf_hash(*h);
            }
            n += batch as u64;
            assert_eq!(files.current_root(), tree.root(n).unwrap());
            for size in 0..=n {
                assert_eq!(crate::merkle::root_of(&files, size).unwrap(), tree.root(size), "root of {size}");
            }
            if batch == 13 {
                files.syncer().sync_and_mark(Mark { size: n, end: files.end(), checkpoints: 3, checkpoints_end: 99 }).unwrap();
                let (mut again, mark) = TreeFiles::open(dir.path()).unwrap();
                assert_eq!(mark, Some(Mark { size: n, end: 100 * n, checkpoints: 3, checkpoints_end: 99 }));
                assert!(again.holds(n).unwrap() && !again.holds(n + 1).unwrap());
                again.reset_to(n, 100 * n).unwrap();
                assert_eq!(again.current_root(), tree.root(n).unwrap());
                files = again;
            }
        }
        for index in 0..n {
            assert_eq!(crate::merkle::inclusion_proof_of(&files, index, n).unwrap(), tree.inclusion_proof(index, n));
        }
        assert_eq!(files.leaves(3, 9).unwrap(), (3..9).map(|i| tree.leaf(i).unwrap()).collect::<Vec<_>>());
        assert_eq!(files.record_offsets(3, 6).unwrap(), vec![300, 400, 500, 600]);
        assert_eq!(files.record_offsets(n - 2, n).unwrap(), vec![100 * (n - 2), 100 * (n - 1), 100 * n]);
        // Cutting back to a smaller size gives that size's tree.
        files.reset_to(20, 2000).unwrap();
        assert_eq!(files.current_root(), tree.root(20).unwrap());
    }
}
