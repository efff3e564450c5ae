//! The RFC 9162 Merkle tree over the log's entries, with inclusion and consistency proofs.
//!
//! SHA-256 is the hash, as RFC 9162 (the CT v2 hash, `sha256` in its registry) and the C2SP
//! `tlog-checkpoint` tooling use: an auditor can check our roots and proofs with any
//! transparency-log library or with a few lines of Python `hashlib`, without BLAKE3 or
//! anything of ours. Leaf hash `SHA-256(0x00 || entry bytes)`, interior node
//! `SHA-256(0x01 || left || right)`.
//!
//! [`Tree`] keeps, for every level, the hashes of all complete aligned subtrees, so the
//! root of any prefix and every proof need O(log n) stored nodes and O(log^2 n) hashing at
//! worst; the memory is about 64 bytes per entry (64 MB at a million entries).
//! The verification functions need no tree: clients use them with only a proof and roots.
use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the hash of one leaf (one entry's canonical bytes).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The hashes of all complete aligned subtrees of the leaves appended so far.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// `levels[k][i]` is the hash of leaves `[i * 2^k, (i + 1) * 2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Self {
        Tree { levels: vec![Vec::new()] }
    }

    /// Build a tree from leaf hashes.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Tree::new();
        t.extend_leaf_hashes(leaves);
        t
    }

    /// Append many leaf hashes at once (opening a log, bulk loads), reserving room for
    /// every level up front instead of growing each level as it fills.
    pub fn extend_leaf_hashes(&mut self, leaves: impl IntoIterator<Item = Hash>) {
        let leaves = leaves.into_iter();
        let mut more = leaves.size_hint().0;
        for level in self.levels.iter_mut() {
            level.reserve(more);
            more /= 2;
        }
        for l in leaves {
            self.push_leaf_hash(l);
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Append one leaf hash, completing every subtree it closes.
    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut k = 0;
        while self.levels[k].len() % 2 == 0 {
            let n = self.levels[k].len();
            let parent = node_hash(&self.levels[k][n - 2], &self.levels[k][n - 1]);
            if self.levels.len() == k + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[k + 1].push(parent);
            k += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(usize::try_from(index).ok()?).copied()
    }

    /// The root hash of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        root_of(self, size).ok().flatten()
    }

    /// RFC 9162 2.1.3.1 PATH(index, D[size]): the inclusion proof of leaf `index` in the
    /// tree of the first `size` leaves, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        inclusion_proof_of(self, index, size).ok().flatten()
    }

    /// RFC 9162 2.1.4.1 PROOF(old, D[new]): the consistency proof between the trees of the
    /// first `old` and `new` leaves. Empty when `old == new` or `old == 0`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        consistency_proof_of(self, old, new).ok().flatten()
    }
}

impl Nodes for Tree {
    type Error = std::io::Error;

    fn leaf_count(&self) -> u64 {
        self.size()
    }

    fn node(&self, level: u32, index: u64) -> std::io::Result<Hash> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such tree node"))
    }
}

/// Where the hashes of a tree's complete aligned subtrees are kept: in memory ([`Tree`]),
/// or in the audit log's node file. Every root and proof is computed from these alone.
pub(crate) trait Nodes {
    /// Why a stored hash could not be read (the source's own error, naming its file).
    type Error;
    /// Number of leaves.
    fn leaf_count(&self) -> u64;
    /// The hash of leaves `[index * 2^level, (index + 1) * 2^level)`; only asked for
    /// subtrees that lie wholly within the leaves.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// MTH(D[lo:hi]) for `lo < hi <= leaf_count`, where the range is a node of the RFC's
/// recursion (its left parts are always complete aligned subtrees).
fn range_hash<N: Nodes + ?Sized>(t: &N, lo: u64, hi: u64) -> Result<Hash, N::Error> {
    let n = hi - lo;
    if n.is_power_of_two() && lo % n == 0 {
        let k = n.trailing_zeros();
        return t.node(k, lo >> k);
    }
    let k = split_point(n);
    Ok(node_hash(&range_hash(t, lo, lo + k)?, &range_hash(t, lo + k, hi)?))
}

/// The root hash of the first `size` leaves; `None` beyond the tree.
pub(crate) fn root_of<N: Nodes + ?Sized>(t: &N, size: u64) -> Result<Option<Hash>, N::Error> {
    if size > t.leaf_count() {
        return Ok(None);
    }
    if size == 0 {
        return Ok(Some(empty_root()));
    }
    range_hash(t, 0, size).map(Some)
}

/// RFC 9162 2.1.3.1 PATH(index, D[size]); `None` when out of range.
pub(crate) fn inclusion_proof_of<N: Nodes + ?Sized>(t: &N, index: u64, size: u64) -> Result<Option<Vec<Hash>>, N::Error> {
    if index >= size || size > t.leaf_count() {
        return Ok(None);
    }
    let mut proof = Vec::new();
    path(t, index, 0, size, &mut proof)?;
    Ok(Some(proof))
}

fn path<N: Nodes + ?Sized>(t: &N, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), N::Error> {
    let n = hi - lo;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(t, m, lo, lo + k, out)?;
        out.push(range_hash(t, lo + k, hi)?);
    } else {
        path(t, m - k, lo + k, hi, out)?;
        out.push(range_hash(t, lo, lo + k)?);
    }
    Ok(())
}

/// RFC 9162 2.1.4.1 PROOF(old, D[new]); `None` when out of range.
pub(crate) fn consistency_proof_of<N: Nodes + ?Sized>(t: &N, old: u64, new: u64) -> Result<Option<Vec<Hash>>, N::Error> {
    if old > new || new > t.leaf_count() {
        return Ok(None);
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(t, old, 0, new, true, &mut proof)?;
    }
    Ok(Some(proof))
}

fn subproof<N: Nodes + ?Sized>(t: &N, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) -> Result<(), N::Error> {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(range_hash(t, lo, hi)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(t, m, lo, lo + k, complete, out)?;
        out.push(range_hash(t, lo + k, hi)?);
    } else {
        subproof(t, m - k, lo + k, hi, false, out)?;
        out.push(range_hash(t, lo, lo + k)?);
    }
    Ok(())
}

/// Right-shift `fn_` and `sn` together until `fn_`'s low bit is set or it reaches 0.
fn shift_while_even(fn_: &mut u64, sn: &mut u64) {
    while *fn_ != 0 && *fn_ & 1 == 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// RFC 9162 2.1.3.2: does `proof` show that `leaf` is leaf `index` of the tree of `size`
/// leaves whose root is `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                shift_while_even(&mut fn_, &mut sn);
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && bool::from(subtle::ConstantTimeEq::ct_eq(&r[..], &root[..]))
}

/// RFC 9162 2.1.4.2: does `proof` show that the tree of `old` leaves with root `old_root`
/// is a prefix of the tree of `new` leaves with root `new_root`?
///
/// The RFC leaves `old == new` and `old == 0` to the caller; here the first needs an empty
/// proof and equal roots, the second an empty proof and the empty tree's root.
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old > new {
        return false;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (old - 1, new - 1);
    if fn_ & 1 == 1 {
        while fn_ & 1 == 1 {
            fn_ >>= 1;
            sn >>= 1;
        }
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                shift_while_even(&mut fn_, &mut sn);
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference MTH, straight from the RFC's recursive definition, over leaf data.
    fn mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => leaf_hash(&d[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    #[test]
    fn rfc6962_reference_vectors() {
        // The eight-leaf test tree of the certificate-transparency reference implementation.
        let leaves: Vec<Vec<u8>> = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
            "606162636465666768696a6b6c6d6e6f"]
            .iter()
            .map(|h| hex::decode(h).unwrap())
            .collect();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let t = Tree::from_leaf_hashes(leaves.iter().map(|l| leaf_hash(l)));
        for (i, want) in roots.iter().enumerate() {
            assert_eq!(hex::encode(t.root(i as u64 + 1).unwrap()), *want, "size {}", i + 1);
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn roots_match_the_recursive_definition() {
        let d = data(70);
        let t = Tree::from_leaf_hashes(d.iter().map(|l| leaf_hash(l)));
        for n in 0..=70 {
            assert_eq!(t.root(n as u64).unwrap(), mth(&d[..n]), "size {n}");
        }
        assert!(t.root(71).is_none());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let d = data(40);
        let t = Tree::from_leaf_hashes(d.iter().map(|l| leaf_hash(l)));
        for size in 1..=40u64 {
            let root = t.root(size).unwrap();
            for index in 0..size {
                let leaf = leaf_hash(&d[index as usize]);
                let proof = t.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(&leaf, index, size, &proof, &root), "{index}/{size}");
                assert!(!verify_inclusion(&leaf_hash(b"other"), index, size, &proof, &root));
                if size > 1 {
                    assert!(!verify_inclusion(&leaf, (index + 1) % size, size, &proof, &root));
                }
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j][0] ^= 1;
                    assert!(!verify_inclusion(&leaf, index, size, &bad, &root));
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(!verify_inclusion(&leaf, index, size, &longer, &root));
                if !proof.is_empty() {
                    assert!(!verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let d = data(40);
        let t = Tree::from_leaf_hashes(d.iter().map(|l| leaf_hash(l)));
        for new in 0..=40u64 {
            let new_root = t.root(new).unwrap();
            for old in 0..=new {
                let old_root = t.root(old).unwrap();
                let proof = t.consistency_proof(old, new).unwrap();
                assert!(verify_consistency(old, new, &old_root, &new_root, &proof), "{old}->{new}");
                if old > 0 && old < new {
                    assert!(!verify_consistency(old, new, &leaf_hash(b"x"), &new_root, &proof));
                    assert!(!verify_consistency(old, new, &old_root, &leaf_hash(b"x"), &proof));
                    for j in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[j][31] ^= 0x80;
                        assert!(!verify_consistency(old, new, &old_root, &new_root, &bad), "{old}->{new} #{j}");
                    }
                    assert!(!verify_consistency(old, new, &old_root, &new_root, &proof[..proof.len() - 1]));
                    // A fork: the same size with a different leaf is not consistent.
                    let mut forked = d[..new as usize].to_vec();
                    forked[old as usize - 1] = b"forged".to_vec();
                    assert!(!verify_consistency(old, new, &mth(&forked[..old as usize]), &new_root, &proof));
                }
            }
        }
    }
}
