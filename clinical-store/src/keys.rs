//! The keys an open store holds, and nothing else: the clinical-data key versions.
use std::sync::atomic::{AtomicUsize, Ordering};

use cleave_keys::{FieldSealer, KeyPurpose, Keyring, VersionedKey};

use crate::Error;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many [`StoreKeys`] exist in this process right now. Lets a test see that closing a
/// store really dropped (and so zeroized) its keys.
pub fn live_key_sets() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// The clinical-data keys, unwrapped from the keyring: every version, so blobs and fields
/// sealed before a rotation still open; the newest seals. Zeroized when dropped, never
/// printed.
pub struct StoreKeys {
    pub(crate) sealer: FieldSealer,
    /// Blob keys are not used raw: each blob derives its own key from one of these.
    pub(crate) blob_keys: Vec<VersionedKey>,
}

impl StoreKeys {
    /// Unwrap every version of the [`KeyPurpose::ClinicalData`] key.
    pub fn unwrap(ring: &Keyring) -> Result<StoreKeys, Error> {
        let sealer_keys = ring.unwrap_all(KeyPurpose::ClinicalData).map_err(Error::Keys)?;
        let mut blob_keys = ring.unwrap_all(KeyPurpose::ClinicalData).map_err(Error::Keys)?;
        if blob_keys.is_empty() {
            return Err(Error::Keys(cleave_keys::Error::UnknownKeyVersion { purpose: "clinical-data", version: 1 }));
        }
        blob_keys.sort_by_key(|k| k.version);
        LIVE.fetch_add(1, Ordering::SeqCst);
        Ok(StoreKeys { sealer: FieldSealer::new(sealer_keys), blob_keys })
    }

    /// The key new blobs are sealed under.
    pub(crate) fn current_blob_key(&self) -> &VersionedKey {
        // `unwrap` refuses an empty key list, so there is always a last one.
        self.blob_keys.last().expect("StoreKeys holds at least one key by construction")
    }
}

impl Drop for StoreKeys {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreKeys(versions: {:?})", self.blob_keys.iter().map(|k| k.version).collect::<Vec<_>>())
    }
}
