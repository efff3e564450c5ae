//! The two stores, opened on demand, and the only way handlers reach them.
//!
//! Each store is an [`OnDemand`]: closed (keys zeroized, files shut) until a request needs
//! it, closed again after `store_idle_secs` without use. Access goes through
//! [`with_vault`], which takes the [`Caller`] that only `authz::authorize` can make, so no
//! code path reaches a store without a verified token; the blocking SQLite work runs on
//! tokio's blocking pool.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cleave_keys::{Keyring, OnDemand};
use clinical_store::ClinicalStore;
use identity_vault::{Vault, VaultKeys};

use crate::authz::Caller;
use crate::state::AppState;
use crate::Error;

/// The stores of one broker.
pub(crate) struct Stores {
    pub vault: Arc<OnDemand<Vault, identity_vault::Error>>,
    pub clinical: Arc<OnDemand<ClinicalStore, clinical_store::Error>>,
}

impl Stores {
    /// `<data>/identity/vault.db` and `<data>/clinical/`, each opened on first use. The
    /// clinical store's crash sweep runs once, here; what it filed again is returned for
    /// the audit trail.
    pub(crate) fn new(data_dir: &Path, keyring: Arc<Keyring>, idle: Duration) -> Result<(Stores, clinical_store::SweepReport), Error> {
        let dir = data_dir.join("identity");
        cleave_keys::durable::create_private_dir(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let ring = keyring.clone();
        let vault = Vault::on_demand_with(dir.join("vault.db"), idle, move || VaultKeys::unwrap(&ring));
        let cdir = data_dir.join("clinical");
        cleave_keys::durable::create_private_dir(&cdir).map_err(|e| Error::io("creating", &cdir, e))?;
        let (clinical, swept) = ClinicalStore::on_demand_swept(cdir, keyring, idle).map_err(clinical_error)?;
        Ok((Stores { vault, clinical }, swept))
    }
}

/// A vault error as an HTTP answer. The vault's messages name fields and rules, never
/// values, so they can be shown.
fn vault_error(e: identity_vault::Error) -> Error {
    use identity_vault::Error as V;
    match e {
        V::NoSuchIdentity => Error::not_found("identity"),
        V::NoSuchReviewItem => Error::not_found("review item"),
        e @ (V::InvalidInput { .. } | V::EmptyQuery | V::MalformedPseudonym | V::BadResolution(_)) => {
            Error::bad_request(e.to_string())
        }
        V::StudyConflict => Error::Conflict(V::StudyConflict.to_string()),
        e => Error::Store(format!("identity vault: {e}")),
    }
}

/// Run `f` on the open identity vault for an authorized caller.
pub(crate) async fn with_vault<R: Send + 'static>(
    state: &AppState,
    _caller: &Caller,
    f: impl FnOnce(&mut Vault) -> Result<R, identity_vault::Error> + Send + 'static,
) -> Result<R, Error> {
    let vault = state.stores.vault.clone();
    tokio::task::spawn_blocking(move || vault.with(f))
        .await
        .map_err(|_| Error::Store("an identity vault call was interrupted".into()))?
        .map_err(vault_error)?
        .map_err(vault_error)
}

/// A clinical-store error as an HTTP answer; its messages name fields and rules only.
pub(crate) fn clinical_error(e: clinical_store::Error) -> Error {
    use clinical_store::Error as C;
    match e {
        C::NotFound(what) => Error::not_found(what),
        e @ C::InvalidInput { .. } => Error::bad_request(e.to_string()),
        e @ C::Conflict(_) => Error::Conflict(e.to_string()),
        e => Error::Store(format!("clinical store: {e}")),
    }
}

/// Run `f` on the open clinical store for an authorized caller.
pub(crate) async fn with_clinical<R: Send + 'static>(
    state: &AppState,
    _caller: &Caller,
    f: impl FnOnce(&mut ClinicalStore) -> Result<R, clinical_store::Error> + Send + 'static,
) -> Result<R, Error> {
    let store = state.stores.clinical.clone();
    tokio::task::spawn_blocking(move || store.with(f))
        .await
        .map_err(|_| Error::Store("a clinical store call was interrupted".into()))?
        .map_err(clinical_error)?
        .map_err(clinical_error)
}

/// The clinical store for an authorized caller, to open instance blobs from a blocking
/// task that streams a response (one file handle at a time, however many instances).
#[derive(Clone)]
pub(crate) struct ClinicalReader {
    store: Arc<OnDemand<ClinicalStore, clinical_store::Error>>,
}

impl ClinicalReader {
    pub(crate) fn new(state: &AppState, _caller: &Caller) -> Self {
        ClinicalReader { store: state.stores.clinical.clone() }
    }

    /// Open one instance's decrypting reader. Blocking.
    pub(crate) fn open_instance(&self, sop_instance_uid: &str) -> Result<clinical_store::BlobReader, Error> {
        let uid = sop_instance_uid.to_owned();
        self.store.with(move |st| st.open_instance(&uid)).map_err(clinical_error)?.map_err(clinical_error)
    }
}

/// The pseudonym a study is filed under, looked up *before* authorization, for one purpose
/// only: a token limited to one patient is checked with the patient a study URL implies
/// (`routes::wado`). The answer never leaves the broker: it becomes a fact the token is
/// checked against, and a token for another patient is refused exactly as for a study that
/// does not exist, so the lookup is no oracle. Callers make sure the request names a live
/// grant first ([`crate::authz::names_live_grant`]), so an anonymous request cannot make
/// the store open.
pub(crate) async fn study_owner_before_authorization(state: &AppState, study_uid: &str) -> Result<Option<String>, Error> {
    let store = state.stores.clinical.clone();
    let uid = study_uid.to_owned();
    tokio::task::spawn_blocking(move || {
        store.with(move |st| {
            let q = clinical_store::StudyQuery { study_uid: Some(uid), ..Default::default() };
            Ok(st.find_studies(&q)?.into_iter().next().map(|s| s.pseudonym))
        })
    })
    .await
    .map_err(|_| Error::Store("a clinical store call was interrupted".into()))?
    .map_err(clinical_error)?
    .map_err(clinical_error)
}
