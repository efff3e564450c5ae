//! The `cleave` command line, defined once: help, the man page (`cleave man`) and shell
//! completions (`cleave completions <shell>`) are all generated from these definitions.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Cleave's client for every role: log in, share, consult, push, look up, audit, administer.
#[derive(Parser, Debug)]
#[command(name = "cleave", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The profile to use (see `cleave profile set`).
    #[arg(long, global = true, env = "CLEAVE_PROFILE", default_value = "default")]
    pub profile: String,
    /// Where profiles and their state live [default: $XDG_CONFIG_HOME/cleave or ~/.config/cleave].
    #[arg(long, global = true, env = "CLEAVE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Use this token instead of the profile's stored one (a shared token, for instance).
    #[arg(long, global = true, env = "CLEAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print machine-readable JSON on stdout (errors too, as {"error":{"code","message"}}).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or show a profile (server URL, CA, client certificate).
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Log in with password and one-time code; the token is stored for this profile (0600).
    Login(LoginArgs),
    /// Log out: revoke this token's grant (and every share made from it) and forget it.
    Logout,
    /// The share button: narrow your token offline into a read-only share for a consultant.
    Share(ShareArgs),
    /// List or revoke the shares you made.
    #[command(subcommand)]
    Shares(SharesCmd),
    /// Act on your own grant.
    #[command(subcommand)]
    Grant(GrantCmd),
    /// As a consultant: read what a shared token grants, over the consultant listener.
    Consult(ConsultArgs),
    /// Send DICOM files (a file or a directory tree) over STOW-RS, resumably.
    Push(PushArgs),
    /// Register a patient in the identity vault (registration desk); prints the pseudonym.
    Register(RegisterArgs),
    /// Find a patient and show identity and clinical summary side by side (two requests).
    Lookup(LookupArgs),
    /// Clinical notes.
    #[command(subcommand)]
    Note(NoteCmd),
    /// Observations.
    #[command(subcommand)]
    Observation(ObservationCmd),
    /// Read and verify the audit log (auditors).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Accounts, devices and the review queue (IT administrators).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Download a study as DICOM files (WADO-RS).
    Retrieve(RetrieveArgs),
    /// De-identified research extracts (researchers).
    #[command(subcommand)]
    Research(ResearchCmd),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Write the profile named by --profile.
    Set {
        /// The broker's mutual-TLS URL, https://host:port.
        #[arg(long)]
        server: String,
        /// The CA certificate (PEM) the broker's certificate is signed by.
        #[arg(long)]
        ca: PathBuf,
        /// Your client certificate (PEM).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Your client key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// The consultant listener's URL, used in share links.
        #[arg(long)]
        consultant: Option<String>,
    },
    /// Show the profile.
    Show,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Your username.
    #[arg(long, env = "CLEAVE_USERNAME", required_unless_present = "device")]
    pub username: Option<String>,
    /// Your password [prompted if absent].
    #[arg(long, env = "CLEAVE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The current one-time code from your authenticator [prompted if absent].
    #[arg(long, env = "CLEAVE_TOTP", hide_env_values = true)]
    pub totp: Option<String>,
    /// Log in as the enrolled device of this profile's certificate instead of a person.
    #[arg(long, conflicts_with_all = ["password", "totp"])]
    pub device: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["patient", "study"])))]
pub struct ShareArgs {
    /// Share one patient (pseudonym, P<digits>-<hex>).
    #[arg(long)]
    pub patient: Option<String>,
    /// Share one study (study instance UID).
    #[arg(long)]
    pub study: Option<String>,
    /// How long the share lives: 90s, 30m, 48h, 7d.
    #[arg(long, default_value = "48h")]
    pub expires: String,
    /// Also let the consultant read the patient's identity (name, ids). Off by default.
    #[arg(long)]
    pub include_identity: bool,
    /// Bind the share to the consultant's certificate (PEM).
    #[arg(long)]
    pub bind_cert: Option<PathBuf>,
    /// Do not draw the QR code.
    #[arg(long)]
    pub no_qr: bool,
}

#[derive(Subcommand, Debug)]
pub enum SharesCmd {
    /// The shares of your current login that have been used.
    List,
    /// Revoke one share by its id; effective from the consultant's next request.
    Revoke { share_id: String },
}

#[derive(Subcommand, Debug)]
pub enum GrantCmd {
    /// Revoke the grant of the current token (and every share made from it).
    Revoke,
}

#[derive(Args, Debug)]
pub struct ConsultArgs {
    /// The consultant listener, https://host:port (from the share link).
    #[arg(long, env = "CLEAVE_CONSULT_URL")]
    pub url: String,
    /// The CA certificate (PEM) of the hospital's server.
    #[arg(long, env = "CLEAVE_CA")]
    pub ca: PathBuf,
    /// Accept a share link (https://…/consult#token=…) in place of --token.
    #[arg(long)]
    pub link: Option<String>,
    #[command(subcommand)]
    pub what: ConsultCmd,
}

#[derive(Subcommand, Debug)]
pub enum ConsultCmd {
    /// The patient's clinical summary and notes.
    Patient { pseudonym: String },
    /// The patient's notes.
    Notes { pseudonym: String },
    /// One study's series and instances.
    Study { study_uid: String },
    /// Download one study's instances into a directory.
    Retrieve {
        study_uid: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// The patient's identity (only if the share includes it).
    Identity { identity_id: String },
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// A DICOM file or a directory to send recursively.
    pub path: PathBuf,
    /// Forget what earlier runs sent and send everything again.
    #[arg(long)]
    pub restart: bool,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[arg(long)]
    pub family: String,
    #[arg(long)]
    pub given: String,
    /// YYYYMMDD.
    #[arg(long)]
    pub birth_date: String,
    /// M, F or O.
    #[arg(long)]
    pub sex: String,
    /// The assigning authority of --patient-id.
    #[arg(long)]
    pub issuer: String,
    #[arg(long)]
    pub patient_id: String,
}

#[derive(Args, Debug)]
pub struct LookupArgs {
    /// Any part of the name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub family: Option<String>,
    #[arg(long)]
    pub given: Option<String>,
    /// YYYYMMDD.
    #[arg(long)]
    pub birth_date: Option<String>,
    #[arg(long)]
    pub patient_id: Option<String>,
    #[arg(long)]
    pub issuer: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NoteCmd {
    /// Add a note to a patient's record.
    Add {
        pseudonym: String,
        #[arg(long)]
        text: String,
        #[arg(long)]
        study: Option<String>,
    },
    /// List a patient's notes.
    List { pseudonym: String },
}

#[derive(Subcommand, Debug)]
pub enum ObservationCmd {
    /// Record an observation; VALUE is a number, true/false, YYYY-MM-DD, or text.
    Set {
        pseudonym: String,
        #[arg(long)]
        code: String,
        #[arg(long)]
        value: String,
        #[arg(long)]
        unit: Option<String>,
    },
    /// List a patient's observations.
    List { pseudonym: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// The latest entries.
    Tail {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Entries matching filters.
    Filter {
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        operation: Option<String>,
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        patient: Option<String>,
    },
    /// Who accessed a patient's records.
    WhoAccessed { pseudonym: String },
    /// Check the log's signed checkpoint against the last one this profile saw.
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Staff accounts.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Enrolled devices.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Possible duplicate identities awaiting a decision.
    #[command(subcommand)]
    Review(ReviewCmd),
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    List,
    /// Create an account; prints its one-time password and TOTP seed to hand over.
    Add {
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        department: String,
    },
    Disable { username: String },
}

#[derive(Subcommand, Debug)]
pub enum DevicesCmd {
    List,
    Revoke { fingerprint: String },
}

#[derive(Subcommand, Debug)]
pub enum ReviewCmd {
    List,
    Resolve {
        item_id: String,
        /// confirm, merge or keep-apart.
        #[arg(long)]
        action: String,
        /// With merge: the identity id to keep.
        #[arg(long)]
        keep: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct RetrieveArgs {
    pub study_uid: String,
    /// Directory to write the instances into.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ResearchCmd {
    /// Download a research-profile extract: one study, or a cohort by modality, date range
    /// and body part (never by patient). Files are written only once the whole export has
    /// arrived.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("selection").required(true).multiple(true).args(["study", "modality", "from", "to", "body_part"])))]
pub struct ExportArgs {
    /// One study (the clinical study UID a protocol names).
    #[arg(long, conflicts_with_all = ["modality", "from", "to", "body_part"])]
    pub study: Option<String>,
    /// Cohort: series of this modality (CT, MR...).
    #[arg(long)]
    pub modality: Option<String>,
    /// Cohort: studies on or after this date (YYYYMMDD).
    #[arg(long)]
    pub from: Option<String>,
    /// Cohort: studies on or before this date (YYYYMMDD).
    #[arg(long)]
    pub to: Option<String>,
    /// Cohort: body part examined (CHEST, HEAD...).
    #[arg(long)]
    pub body_part: Option<String>,
    /// Keep dates, moved by a secret offset per subject (1 to 3652 days back, new for each
    /// export), so intervals survive; without it, dates are removed.
    #[arg(long)]
    pub shift_dates: bool,
    /// Directory to write the instances into (created 0700 if missing).
    #[arg(long)]
    pub out: PathBuf,
}
