//! Opening a broker: first-run setup, then the listeners.
//!
//! On first run with an empty data directory, [`open`] creates the directory (0700), the
//! master key file (0600) and keyring, the local CA and server certificate (unless the
//! configuration names the hospital's PKI), the configuration file with every default
//! spelled out, and a bootstrap IT administrator whose password, TOTP seed and client
//! certificate go into `<data>/bootstrap/` (0600). Later runs reuse all of it.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cleave_keys::{KeySource, Keyring};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::accounts::Accounts;
use crate::audit::{AuditSink, AuditTrail};
use crate::config::{Config, CONFIG_FILE};
use crate::roles::Role;
use crate::server::{ListenerKind, Limits};
use crate::state::AppState;
use crate::{pki, routes, tls, Error};

/// The account created on first run.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// How to open the master key.
pub enum MasterKeySource {
    /// `<data>/keys/master.key`, created on first run.
    KeyFile,
    /// An operator passphrase (from `--passphrase-file` or a prompt).
    Passphrase(zeroize::Zeroizing<String>),
}

/// What `serve` was asked for on the command line; `None` keeps the configuration's value.
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub master_key: MasterKeySource,
    pub listen: Option<SocketAddr>,
    pub consultant_listen: Option<SocketAddr>,
    pub dicom_listen: Option<SocketAddr>,
    /// Replaces the audit sink (default: the `cleave-audit` log in `<data>/audit/`).
    pub audit: Option<Box<dyn AuditSink>>,
}

impl ServeOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServeOptions {
            data_dir: data_dir.into(),
            master_key: MasterKeySource::KeyFile,
            listen: None,
            consultant_listen: None,
            dicom_listen: None,
            audit: None,
        }
    }
}

/// Paths of what first run wrote for the bootstrap administrator.
#[derive(Clone, Debug)]
pub struct BootstrapFiles {
    pub dir: PathBuf,
    /// Password and TOTP seed (base32), 0600.
    pub credentials: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl BootstrapFiles {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("bootstrap");
        BootstrapFiles {
            credentials: dir.join("admin-credentials.txt"),
            cert: dir.join("admin.pem"),
            key: dir.join("admin.key"),
            dir,
        }
    }
}

/// An opened data directory: configuration, keyring and account database.
pub struct Opened {
    pub data_dir: PathBuf,
    pub config: Config,
    pub keyring: Keyring,
    pub accounts: Accounts,
    /// Set when this open created the bootstrap administrator.
    pub bootstrap: Option<BootstrapFiles>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({})", self.data_dir.display())
    }
}

fn key_source(data_dir: &Path, m: MasterKeySource) -> KeySource {
    match m {
        MasterKeySource::KeyFile => KeySource::KeyFile(data_dir.join("keys").join("master.key")),
        MasterKeySource::Passphrase(p) => KeySource::Passphrase(p),
    }
}

/// Open the data directory, creating everything a first run needs.
pub fn open(data_dir: &Path, master_key: MasterKeySource) -> Result<Opened, Error> {
    cleave_keys::durable::create_private_dir(data_dir).map_err(|e| Error::io("creating", data_dir, e))?;
    let config_path = data_dir.join(CONFIG_FILE);
    let config = Config::load(data_dir)?;
    if !config_path.exists() {
        cleave_keys::durable::write_atomic(&config_path, config.to_toml().as_bytes(), 0o600)
            .map_err(|e| Error::io("writing", &config_path, e))?;
    }
    let keyring = Keyring::open_or_create(&data_dir.join("keys").join("keyring.json"), key_source(data_dir, master_key))?;
    if !config.uses_hospital_pki() {
        pki::ensure_local_pki(data_dir, &config)?;
    }
    let accounts = Accounts::open(data_dir, &keyring)?;
    let bootstrap = if accounts.staff_exists(BOOTSTRAP_ADMIN)? { None } else { Some(bootstrap_admin(data_dir, &config, &accounts)?) };
    Ok(Opened { data_dir: data_dir.to_owned(), config, keyring, accounts, bootstrap })
}

fn bootstrap_admin(data_dir: &Path, config: &Config, accounts: &Accounts) -> Result<BootstrapFiles, Error> {
    let files = BootstrapFiles::in_data_dir(data_dir);
    cleave_keys::durable::create_private_dir(&files.dir).map_err(|e| Error::io("creating", &files.dir, e))?;
    // The certificate first: if this fails the account does not exist yet and the next
    // run tries again from scratch.
    if !config.uses_hospital_pki() {
        let issued = pki::issue_client_cert(data_dir, BOOTSTRAP_ADMIN, 825)?;
        pki::write_pair(&files.dir, BOOTSTRAP_ADMIN, &issued)?;
    }
    let creds = accounts.add_staff(BOOTSTRAP_ADMIN, Role::ItAdmin, "it")?;
    let text = zeroize::Zeroizing::new(format!(
        "# Cleave bootstrap IT administrator. Log in once, create named accounts, then delete this file.\n\
         username = {BOOTSTRAP_ADMIN}\npassword = {}\ntotp_secret_base32 = {}\ntotp = SHA1, 6 digits, 30 s\n",
        creds.password.as_str(),
        creds.totp_base32.as_str()
    ));
    cleave_keys::durable::write_atomic(&files.credentials, text.as_bytes(), 0o600)
        .map_err(|e| Error::io("writing", &files.credentials, e))?;
    Ok(files)
}

/// A running broker. Dropping it stops the listeners.
pub struct RunningBroker {
    /// The mutual-TLS listener's address.
    pub addr: SocketAddr,
    /// The consultant listener's address, if configured.
    pub consultant_addr: Option<SocketAddr>,
    /// The DICOM TLS (DIMSE) listener's address, if configured.
    pub dicom_addr: Option<SocketAddr>,
    /// What first run created, if this start was a first run.
    pub bootstrap: Option<BootstrapFiles>,
    tasks: Vec<JoinHandle<()>>,
    /// Dropping the handle stops the DIMSE server (its stop channel closes).
    dicom: Option<cleave_dimse::ServerHandle>,
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RunningBroker {
    /// Serve until the listeners fail (they do not, short of the process ending).
    pub async fn wait(mut self) {
        // Keeps the DIMSE server running for as long as the HTTPS listeners.
        let _dicom = self.dicom.take();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

/// Open the data directory and start listening.
pub async fn start(opts: ServeOptions) -> Result<RunningBroker, Error> {
    let data_dir = opts.data_dir.clone();
    let master = opts.master_key;
    let opened = tokio::task::spawn_blocking(move || open(&data_dir, master))
        .await
        .map_err(|_| Error::Config("opening the data directory was interrupted".into()))??;
    let mut config = opened.config.clone();
    if let Some(a) = opts.listen {
        config.listen = a;
    }
    if opts.consultant_listen.is_some() {
        config.consultant_listen = opts.consultant_listen;
    }
    if opts.dicom_listen.is_some() {
        config.dicom_listen = opts.dicom_listen;
    }
    let (ca, cert, key) = pki::tls_material_paths(&opened.data_dir, &config);
    let mtls = tls::mtls_server_config(&ca, &cert, &key)?;
    let consultant_tls = match config.consultant_listen {
        Some(_) => Some(tls::server_only_config(&cert, &key)?),
        None => None,
    };
    let limits = Limits {
        header_read_timeout: std::time::Duration::from_secs(config.header_read_timeout_secs),
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout_secs),
        handshake_timeout: std::time::Duration::from_secs(config.handshake_timeout_secs),
        max_connections: config.max_connections,
    };
    // The audit log is opened here, not in `open`: it holds an exclusive lock on its
    // directory for as long as this broker runs, and CLI tools call `open` alongside.
    let (trail, keyring) = {
        let (dir, keyring) = (opened.data_dir.clone(), opened.keyring);
        let every = std::time::Duration::from_secs(config.audit_checkpoint_secs);
        let (trail, keyring) = tokio::task::spawn_blocking(move || AuditTrail::open(&dir, &keyring, every).map(|t| (t, keyring)))
            .await
            .map_err(|_| Error::Config("opening the audit log was interrupted".into()))??;
        let trail = match &config.audit_syslog {
            Some(c) => trail.with_syslog(c, &opened.data_dir)?,
            None => trail,
        };
        (std::sync::Arc::new(trail), keyring)
    };
    let audit = opts.audit.unwrap_or_else(|| Box::new(trail.clone()));
    let bootstrap = opened.bootstrap.clone();
    if bootstrap.is_some() {
        // This run created the bootstrap administrator before the log was open: record it.
        trail.record_bootstrap()?;
    }
    let idle = std::time::Duration::from_secs(config.store_idle_secs);
    let keyring = std::sync::Arc::new(keyring);
    let (stores, swept) = crate::stores::Stores::new(&opened.data_dir, keyring.clone(), idle)?;
    // Instances the clinical store filed again because a crash lost their index rows: each
    // gets an ingest entry of its own, before anything is served.
    trail.record_refiled(&swept.refiled)?;
    let pipeline = crate::ingest::Pipeline {
        vault: stores.vault.clone(),
        clinical: stores.clinical.clone(),
        keyring,
        limits: cleave_deid::Limits::default(),
        vault_thread: std::sync::Arc::new(
            crate::ingest::VaultThread::start().map_err(|e| Error::Config(format!("cannot start the vault thread ({e})")))?,
        ),
    };
    let state = AppState::new(config.clone(), opened.accounts, audit, trail, stores, pipeline);
    let app = routes::router(state.clone());

    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.map_err(|e| Error::Config(format!("cannot listen on {a} ({e}); choose another address")))
    };
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr().map_err(|e| Error::Config(format!("listener address: {e}")))?;
    let mut tasks = vec![tokio::spawn(crate::server::serve(listener, TlsAcceptor::from(mtls.clone()), ListenerKind::Mtls, app.clone(), limits))];
    let dimse_tls = mtls.clone();
    let mut consultant_addr = None;
    if let (Some(a), Some(cfg)) = (config.consultant_listen, consultant_tls) {
        let l = bind(a).await?;
        consultant_addr = Some(l.local_addr().map_err(|e| Error::Config(format!("listener address: {e}")))?);
        tasks.push(tokio::spawn(crate::server::serve(l, TlsAcceptor::from(cfg), ListenerKind::Consultant, app, limits)));
    }
    // DICOM TLS: the same server certificate and the same CA for client certificates as the
    // HTTPS listener, so a device enrolled once can use STOW-RS and C-STORE alike.
    let mut dicom = None;
    let mut dicom_addr = None;
    if let Some(a) = config.dicom_listen {
        let sink = std::sync::Arc::new(crate::dimse::DimseSink::new(state));
        let server = cleave_dimse::DimseServer::bind(a, dimse_tls, sink, cleave_dimse::DimseConfig::default())
            .await
            .map_err(|e| Error::Config(format!("cannot serve DICOM TLS on {a} ({e}); choose another dicom_listen address")))?;
        dicom_addr = Some(server.local_addr());
        dicom = Some(server.spawn());
    }
    Ok(RunningBroker { addr, consultant_addr, dicom_addr, bootstrap, tasks, dicom })
}
