//! `cleave-broker`: glue between the command line and the `broker` library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use broker::{Error, MasterKeySource, OperatorAction, OperatorAudit, Role, ServeOptions};
use clap::{Args, Parser, Subcommand};

// Freed heap blocks are wiped: request and response buffers carry PHI (threat T3).
#[global_allocator]
static ALLOC: broker::ZeroingAllocator = broker::zeroing_allocator();

/// Cleave's broker: the only door to the identity and clinical stores.
#[derive(Parser)]
#[command(name = "cleave-broker", version)]
struct Cli {
    /// The data directory (created on first run, mode 0700).
    #[arg(long, global = true, default_value = "./cleave-data", env = "CLEAVE_DATA_DIR")]
    data_dir: PathBuf,
    /// Derive the master key from the passphrase in this file instead of the key file.
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Prompt for the master key passphrase instead of using the key file.
    #[arg(long, global = true, conflicts_with = "passphrase_file")]
    passphrase: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (first run sets up keys, a local CA and a bootstrap administrator).
    Serve(ServeArgs),
    /// Issue a client certificate and key from the local CA (PEM files, mode 0600).
    #[command(subcommand)]
    Enroll(EnrollCmd),
    /// Manage staff accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage enrolled devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Check the audit log on disk (stop the broker first).
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check every entry of `<data>/audit/` against every signed checkpoint, offline, and
    /// name the first entry or checkpoint that does not verify. Reads only. For when the
    /// broker refuses requests because its audit history check failed.
    Verify,
    /// Put `<data>/audit/` back from a copy taken with the broker stopped, after `audit
    /// verify` found the live log altered or damaged. The copy must verify under this data
    /// directory's key; the replaced log is kept beside it as `audit-evidence-<time>`, and
    /// the restored log records the restore. The broker must be stopped.
    Restore {
        /// The copy of the audit folder to restore from.
        copy: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The mutual-TLS HTTPS address (default from cleave.toml, else 127.0.0.1:8443).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The consultant (server-only TLS, shared tokens only) address.
    #[arg(long)]
    consultant_listen: Option<SocketAddr>,
    /// The DICOM TLS address.
    #[arg(long)]
    dicom_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum EnrollCmd {
    /// A certificate for a person (log in with it, then with password and TOTP).
    Person {
        username: String,
        /// Where to write `<username>.pem` and `<username>.key`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// A certificate for a device, registered as enrolled (it may fetch a device token).
    Device {
        /// A label for the device (e.g. `ct-scanner-2`).
        label: String,
        #[arg(long)]
        ae_title: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account; its password and TOTP seed are written to a 0600 file.
    Add {
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        department: String,
        /// Directory for `<username>-credentials.txt`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    List,
    /// Disable an account and revoke its tokens.
    Disable { username: String },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Register a device certificate issued by the hospital's PKI.
    Add {
        label: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        ae_title: String,
    },
    List,
    /// Revoke a device (by label or certificate fingerprint) and its tokens.
    Revoke { device: String },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Add a new version of a purpose's key (e.g. `broker-data`, `macaroon-root-kek`).
    Rotate { purpose: String },
}

fn master_key(cli: &Cli) -> Result<MasterKeySource, Error> {
    if let Some(p) = &cli.passphrase_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::Config(format!("cannot read the passphrase file {} ({e})", p.display())))?;
        return Ok(MasterKeySource::Passphrase(zeroize::Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())));
    }
    if cli.passphrase {
        let pw = rpassword::prompt_password("Cleave master key passphrase: ")
            .map_err(|e| Error::Config(format!("cannot read the passphrase ({e})")))?;
        return Ok(MasterKeySource::Passphrase(zeroize::Zeroizing::new(pw)));
    }
    Ok(MasterKeySource::KeyFile)
}

fn write_credentials(out: &Path, username: &str, creds: &broker::NewCredentials) -> Result<PathBuf, Error> {
    cleave_keys::durable::create_private_dir(out)
        .map_err(|e| Error::Config(format!("cannot create {} ({e})", out.display())))?;
    let path = out.join(format!("{username}-credentials.txt"));
    let text = zeroize::Zeroizing::new(format!(
        "username = {username}\npassword = {}\ntotp_secret_base32 = {}\ntotp = SHA1, 6 digits, 30 s\n",
        creds.password.as_str(),
        creds.totp_base32.as_str()
    ));
    cleave_keys::durable::write_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|e| Error::Config(format!("cannot write {} ({e})", path.display())))?;
    Ok(path)
}

/// What to do instead when a broker runs and the command has no audited route.
const STOP_FIRST: &str = "stop the broker, run this command, then start the broker again";

/// Open the data directory and its audit log for an operator command (see
/// `broker::OperatorAudit`): refused while a broker runs, so that no change goes unrecorded.
fn audited(data: &Path, key: MasterKeySource, instead: &str) -> Result<(broker::Opened, OperatorAudit), Error> {
    let opened = broker::open(data, key)?;
    let audit = OperatorAudit::open(&opened, instead)?;
    Ok((opened, audit))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let key = master_key(&cli)?;
    let data = cli.data_dir.clone();
    match cli.command {
        Command::Serve(a) => {
            let mut opts = ServeOptions::new(&data);
            opts.master_key = key;
            opts.listen = a.listen;
            opts.consultant_listen = a.consultant_listen;
            opts.dicom_listen = a.dicom_listen;
            let running = broker::start(opts).await?;
            // SIGTERM is how systemd, Docker and Kubernetes stop a service: it must take the
            // same orderly way out as Ctrl-C (stores closed, the audit log's tail signed).
            // Both handlers are registered before the listening line: a supervisor that
            // signals as soon as it reads that line must not find the default action
            // (an abrupt exit with the tail unsigned) still in place.
            use tokio::signal::unix::{signal, SignalKind};
            let mut interrupt = signal(SignalKind::interrupt())
                .map_err(|e| Error::Config(format!("cannot handle SIGINT: {e}")))?;
            let mut terminate = signal(SignalKind::terminate())
                .map_err(|e| Error::Config(format!("cannot handle SIGTERM: {e}")))?;
            if let Some(b) = &running.bootstrap {
                eprintln!(
                    "First run: the bootstrap IT administrator's password and TOTP seed are in {} and its client certificate in {} (key {}). Read them once, then delete the credentials file.",
                    b.credentials.display(),
                    b.cert.display(),
                    b.key.display()
                );
            }
            eprintln!("cleave-broker listening on https://{} (mutual TLS)", running.addr);
            if let Some(c) = running.consultant_addr {
                eprintln!("consultant listener on https://{c} (shared tokens only)");
            }
            if let Some(d) = running.dicom_addr {
                eprintln!("DICOM TLS listener on {d} (enrolled devices: C-STORE, C-ECHO)");
            }
            tokio::select! {
                _ = running.wait() => {}
                _ = interrupt.recv() => eprintln!("stopping"),
                _ = terminate.recv() => eprintln!("stopping (SIGTERM)"),
            }
        }
        Command::Enroll(EnrollCmd::Person { username, out }) => {
            let (opened, audit) = audited(&data, key, STOP_FIRST)?;
            let issued = audit.run(OperatorAction::Enroll, || broker::issue_client_cert(&opened.data_dir, &username, 825))?;
            let (c, k) = broker::write_pair(&out, &username, &issued)?;
            eprintln!("wrote {} and {} (fingerprint {})", c.display(), k.display(), issued.fingerprint);
        }
        Command::Enroll(EnrollCmd::Device { label, ae_title, out }) => {
            let (opened, audit) = audited(&data, key, STOP_FIRST)?;
            let issued = audit.run(OperatorAction::Enroll, || {
                let issued = broker::issue_client_cert(&opened.data_dir, &label, 825)?;
                opened.accounts.add_device(issued.fingerprint.hex(), &label, &ae_title, "cli")?;
                Ok(issued)
            })?;
            let (c, k) = broker::write_pair(&out, &label, &issued)?;
            eprintln!("enrolled device; wrote {} and {} (fingerprint {})", c.display(), k.display(), issued.fingerprint);
        }
        Command::User(UserCmd::Add { username, role, department, out }) => {
            let role = Role::parse(&role).ok_or_else(|| {
                Error::Config("unknown role; use modality, nurse, doctor, registration, it-admin, auditor or researcher".into())
            })?;
            let (opened, audit) = audited(&data, key, "use `cleave admin users add` (the broker records it), or stop the broker first")?;
            let creds = audit.run(OperatorAction::Enroll, || opened.accounts.add_staff(&username, role, &department))?;
            let path = write_credentials(&out, &username, &creds)?;
            eprintln!("created the account; its password and TOTP seed are in {} (0600)", path.display());
        }
        Command::User(UserCmd::List) => {
            let (opened, audit) = audited(&data, key, "use `cleave admin users list` (the broker records it)")?;
            for s in audit.run(OperatorAction::ListAccounts, || opened.accounts.list_staff())? {
                println!("{}\t{}\t{}\t{}", s.username, s.role, s.department, if s.disabled { "disabled" } else { "active" });
            }
        }
        Command::User(UserCmd::Disable { username }) => {
            let (opened, audit) = audited(&data, key, "use `cleave admin users disable` (the broker records it)")?;
            audit.run(OperatorAction::Revoke, || opened.accounts.disable_staff(&username))?;
            eprintln!("disabled the account and revoked its tokens");
        }
        Command::Device(DeviceCmd::Add { label, cert, ae_title }) => {
            let fp = broker::fingerprint_of_pem_file(&cert)?;
            let (opened, audit) = audited(&data, key, STOP_FIRST)?;
            audit.run(OperatorAction::Enroll, || opened.accounts.add_device(fp.hex(), &label, &ae_title, "cli"))?;
            eprintln!("enrolled the device ({fp})");
        }
        Command::Device(DeviceCmd::List) => {
            let (opened, audit) = audited(&data, key, "use `cleave admin devices list` (the broker records it)")?;
            for d in audit.run(OperatorAction::ListAccounts, || opened.accounts.list_devices())? {
                println!("{}\t{}\tsha256:{}\t{}", d.label, d.ae_title, d.fingerprint, if d.revoked { "revoked" } else { "active" });
            }
        }
        Command::Device(DeviceCmd::Revoke { device }) => {
            let (opened, audit) = audited(&data, key, "use `cleave admin devices revoke` (the broker records it)")?;
            audit.run(OperatorAction::Revoke, || opened.accounts.revoke_device(&device))?;
            eprintln!("revoked the device and its tokens");
        }
        Command::Audit(AuditCmd::Verify) => {
            if !data.join("audit").is_dir() {
                return Err(Error::Config(format!("{} holds no audit log (no audit/ folder); check --data-dir", data.display())));
            }
            let opened = broker::open(&data, key)?;
            match broker::AuditTrail::verify_offline(&opened.data_dir, &opened.keyring)? {
                Ok(r) => {
                    let newest = r.newest.as_ref().map_or("none".to_owned(), |c| c.size.to_string());
                    println!(
                        "the audit log verifies: {} entries, {} signed checkpoints (the newest of size {newest}), {} entries after it not yet signed",
                        r.entries, r.checkpoints, r.unsigned_tail
                    );
                }
                Err(cleave_audit::VerifyError::Failed(f)) => {
                    for p in &f.problems {
                        println!("problem: {p}");
                    }
                    return Err(Error::AuditDoesNotVerify(format!(
                        "{f}. Keep a copy of {} as evidence before anything else, then bring the folder back from the latest copy taken with the broker stopped (README, \"When the audit log stops the broker\")",
                        data.join("audit").display()
                    )));
                }
                Err(e) => return Err(Error::Audit(e.to_string())),
            }
        }
        Command::Audit(AuditCmd::Restore { copy }) => {
            // Opening a folder that is not a data directory would create one, keys and all.
            if !data.join("keys").is_dir() {
                return Err(Error::Config(format!("{} is not a Cleave data directory (no keys/ folder); check --data-dir", data.display())));
            }
            let opened = broker::open(&data, key)?;
            match broker::AuditTrail::restore_offline(&opened.data_dir, &opened.keyring, &copy)? {
                Ok(r) => {
                    println!(
                        "restored the audit log from {}: {} entries, the last (entry {}) recording this restore",
                        copy.display(),
                        r.entries,
                        r.recovery_leaf
                    );
                    if let Some(e) = &r.evidence {
                        println!("the log it replaced is kept, unchanged, in {}; keep it as evidence", e.display());
                    }
                }
                Err(cleave_audit::RestoreError::CopyDoesNotVerify(v)) => {
                    for p in v.failure().map(|f| f.problems.as_slice()).unwrap_or_default() {
                        println!("problem in the copy: {p}");
                    }
                    return Err(Error::AuditDoesNotVerify(format!(
                        "{}; nothing was changed. Try an older copy",
                        cleave_audit::RestoreError::CopyDoesNotVerify(v)
                    )));
                }
                Err(cleave_audit::RestoreError::Refused(cleave_audit::Error::Locked(_))) => {
                    return Err(broker::broker_running("stop it (SIGTERM), then run the restore again"));
                }
                Err(e @ cleave_audit::RestoreError::Refused(cleave_audit::Error::Restore(_))) => return Err(Error::Config(e.to_string())),
                Err(e) => return Err(Error::Audit(e.to_string())),
            }
        }
        Command::Keys(KeysCmd::Rotate { purpose }) => {
            let p = cleave_keys::KeyPurpose::ALL
                .into_iter()
                .find(|p| p.name() == purpose)
                .ok_or_else(|| Error::Config("unknown key purpose; see keys/FORMAT.md for the list".into()))?;
            let (mut opened, audit) = audited(&data, key, STOP_FIRST)?;
            let v = audit.run(OperatorAction::KeyRotate, || Ok(opened.keyring.rotate(p)?))?;
            eprintln!("{} is now at version {v}; new data is sealed under it", p.name());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime ({e})");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
