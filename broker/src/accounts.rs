//! The broker's own database: staff accounts, enrolled devices, grants and the shares seen.
//!
//! SQLite in WAL mode with `synchronous=FULL`, so an acknowledged change (a revocation
//! above all) survives power loss. Secrets never sit in the clear: passwords are Argon2id
//! PHC strings; TOTP seeds are sealed under `broker-data`; each grant's macaroon root key
//! is sealed under `macaroon-root-kek` with the grant id and its subject as the seal
//! context, so a sealed root key copied to another grant row does not open.
//!
//! Nothing here is patient data: usernames, departments, device labels and AE titles are
//! staff and equipment names.
use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use cleave_keys::{FieldSealer, Key32, KeyPurpose, Keyring, SealContext};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::roles::Role;
use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS staff (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    totp_sealed BLOB NOT NULL,
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    role TEXT NOT NULL,
    department TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    fingerprint TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    ae_title TEXT NOT NULL,
    enrolled_by TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    root_key_sealed BLOB NOT NULL,
    created_day TEXT NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS shares (
    grant_id TEXT NOT NULL,
    share_id TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grant_id, share_id)
) STRICT;
PRAGMA user_version = 1;
";

/// A staff account as listed (no secrets).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StaffInfo {
    pub username: String,
    pub role: String,
    pub department: String,
    pub disabled: bool,
}

/// An enrolled device as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub fingerprint: String,
    pub label: String,
    pub ae_title: String,
    pub enrolled_by: String,
    pub revoked: bool,
}

/// A share seen in use, as listed to the doctor who made it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ShareInfo {
    pub share_id: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub revoked: bool,
}

/// Who a grant was issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Staff(String),
    Device(String),
}

impl Subject {
    fn kind(&self) -> &'static str {
        match self {
            Subject::Staff(_) => "staff",
            Subject::Device(_) => "device",
        }
    }
    fn name(&self) -> &str {
        match self {
            Subject::Staff(s) | Subject::Device(s) => s,
        }
    }
}

/// A live grant and its unsealed root key.
pub struct GrantKey {
    pub grant_id: String,
    pub subject: Subject,
    pub expires: i64,
    pub root_key: Key32,
}

/// The outcome of checking a password and TOTP code.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginCheck {
    Ok { role: Role },
    /// Unknown user, wrong password or wrong code: the caller does not learn which.
    Wrong,
    /// The account exists and the credentials were right, but it is disabled.
    Disabled,
}

/// New credentials, shown once to whoever creates the account.
pub struct NewCredentials {
    pub password: Zeroizing<String>,
    /// Base32 TOTP seed (RFC 6238, SHA-1, 6 digits, 30 s).
    pub totp_base32: Zeroizing<String>,
}

/// The broker database.
pub struct Accounts {
    conn: Mutex<Connection>,
    data: FieldSealer,
    root_kek: FieldSealer,
    /// A hash of a random password, verified against when the user is unknown so that an
    /// unknown name costs the same time as a wrong password.
    dummy_hash: String,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accounts")
    }
}

fn argon2() -> Argon2<'static> {
    // argon2 0.5 defaults: Argon2id v0x13, m = 19 MiB, t = 2, p = 1 (OWASP's recommendation).
    Argon2::default()
}

fn hash_password(pw: &str) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    cleave_keys::random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Database(format!("password salt: {e}")))?;
    argon2()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Database(format!("password hashing: {e}")))
}

fn verify_password(pw: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(pw.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A random password of 20 characters from an alphabet without look-alikes (~115 bits).
pub(crate) fn random_password() -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = Zeroizing::new(String::with_capacity(20));
    let mut b = [0u8; 1];
    while out.len() < 20 {
        cleave_keys::random_bytes(&mut b);
        // Rejection sampling keeps the choice uniform.
        let v = b[0] as usize;
        if v < 256 - 256 % ALPHABET.len() {
            out.push(ALPHABET[v % ALPHABET.len()] as char);
        }
    }
    out
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn root_ctx_row(grant_id: &str, subject: &Subject) -> String {
    format!("{grant_id}/{}/{}", subject.kind(), subject.name())
}

pub(crate) fn totp_for(seed: &[u8]) -> Result<totp_rs::TOTP, Error> {
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, seed.to_vec())
        .map_err(|e| Error::Database(format!("stored TOTP seed unusable: {e}")))
}

impl Accounts {
    /// Open (or create) `<data>/broker/broker.sqlite`.
    pub fn open(data_dir: &Path, keyring: &Keyring) -> Result<Accounts, Error> {
        let dir = data_dir.join("broker");
        cleave_keys::durable::create_private_dir(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let path = dir.join("broker.sqlite");
        let conn = Connection::open(&path).map_err(Error::db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(Error::db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(Error::db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(Error::db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(Error::db)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(Error::db)?;
        if version > 1 {
            return Err(Error::Database(format!(
                "schema version {version} is newer than this broker understands; upgrade the broker"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(Error::db)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        let data = FieldSealer::new(keyring.unwrap_all(KeyPurpose::BrokerData)?);
        let root_kek = FieldSealer::new(keyring.unwrap_all(KeyPurpose::MacaroonRootKek)?);
        let dummy_hash = hash_password(&random_password())?;
        Ok(Accounts { conn: Mutex::new(conn), data, root_kek, dummy_hash })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (it is
        // transactional), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a staff account with a random password and TOTP seed, returned once.
    pub fn add_staff(&self, username: &str, role: Role, department: &str) -> Result<NewCredentials, Error> {
        validate_name(username, "username")?;
        validate_name(department, "department")?;
        let password = random_password();
        let mut seed = Zeroizing::new([0u8; 20]);
        cleave_keys::random_bytes(&mut seed[..]);
        let totp_base32 = Zeroizing::new(totp_for(&seed[..])?.get_secret_base32());
        let hash = hash_password(&password)?;
        let sealed = self.data.seal(SealContext::new("staff", "totp", username), &seed[..]);
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO staff (username, password_hash, totp_sealed, role, department, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![username, hash, sealed, role.name(), department, now_unix()],
            )
            .map_err(Error::db)?;
        if n == 0 {
            return Err(Error::Conflict("an account with this username already exists; choose another".into()));
        }
        Ok(NewCredentials { password, totp_base32 })
    }

    /// Whether an account of this name exists.
    pub fn staff_exists(&self, username: &str) -> Result<bool, Error> {
        self.conn()
            .query_row("SELECT 1 FROM staff WHERE username = ?1", [username], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(Error::db)
    }

    pub fn list_staff(&self) -> Result<Vec<StaffInfo>, Error> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT username, role, department, disabled FROM staff ORDER BY username")
            .map_err(Error::db)?;
        let rows = st
            .query_map([], |r| {
                Ok(StaffInfo { username: r.get(0)?, role: r.get(1)?, department: r.get(2)?, disabled: r.get::<_, i64>(3)? != 0 })
            })
            .map_err(Error::db)?;
        rows.collect::<Result<_, _>>().map_err(Error::db)
    }

    /// Disable an account and revoke every grant it holds.
    pub fn disable_staff(&self, username: &str) -> Result<(), Error> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(Error::db)?;
        let n = tx.execute("UPDATE staff SET disabled = 1 WHERE username = ?1", [username]).map_err(Error::db)?;
        if n == 0 {
            return Err(Error::not_found("account"));
        }
        tx.execute("UPDATE grants SET revoked = 1 WHERE subject_kind = 'staff' AND subject = ?1", [username])
            .map_err(Error::db)?;
        tx.commit().map_err(Error::db)
    }

    /// Check a password and TOTP code. Spends the same Argon2 work whether or not the
    /// user exists; a TOTP code is accepted once only (its time step must be newer than
    /// the last one accepted for the account, RFC 6238 section 5.2).
    pub fn check_login(&self, username: &str, password: &str, totp_code: &str) -> Result<LoginCheck, Error> {
        let row: Option<(String, Vec<u8>, i64, String, i64)> = self
            .conn()
            .query_row(
                "SELECT password_hash, totp_sealed, totp_last_step, role, disabled FROM staff WHERE username = ?1",
                [username],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(Error::db)?;
        let Some((hash, sealed, last_step, role, disabled)) = row else {
            let _ = verify_password(password, &self.dummy_hash);
            return Ok(LoginCheck::Wrong);
        };
        if !verify_password(password, &hash) {
            return Ok(LoginCheck::Wrong);
        }
        let seed = self.data.open(SealContext::new("staff", "totp", username), &sealed)?;
        let totp = totp_for(seed.expose())?;
        let now = now_unix().max(0) as u64;
        let current = now / 30;
        let mut accepted = None;
        for step in [current.saturating_sub(1), current, current + 1] {
            let code = totp.generate(step * 30);
            if bool::from(subtle::ConstantTimeEq::ct_eq(code.as_bytes(), totp_code.as_bytes())) {
                accepted = Some(step);
            }
        }
        let Some(step) = accepted else { return Ok(LoginCheck::Wrong) };
        // Compare-and-set, so two concurrent logins with one code cannot both pass.
        let n = self
            .conn()
            .execute(
                "UPDATE staff SET totp_last_step = ?1 WHERE username = ?2 AND totp_last_step < ?1",
                params![step as i64, username],
            )
            .map_err(Error::db)?;
        if n == 0 || (step as i64) <= last_step {
            return Ok(LoginCheck::Wrong);
        }
        if disabled != 0 {
            return Ok(LoginCheck::Disabled);
        }
        let role = Role::parse(&role)
            .ok_or_else(|| Error::Database("an account has a role this broker does not know; fix it with `user`".into()))?;
        Ok(LoginCheck::Ok { role })
    }

    /// The role of an enabled account.
    pub fn staff_role(&self, username: &str) -> Result<Option<Role>, Error> {
        let row: Option<(String, i64)> = self
            .conn()
            .prepare_cached("SELECT role, disabled FROM staff WHERE username = ?1")
            .and_then(|mut st| st.query_row([username], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(Error::db)?;
        Ok(row.and_then(|(r, d)| if d == 0 { Role::parse(&r) } else { None }))
    }

    /// Register a device certificate.
    pub fn add_device(&self, fingerprint: &str, label: &str, ae_title: &str, enrolled_by: &str) -> Result<(), Error> {
        validate_name(label, "device label")?;
        validate_ae_title(ae_title)?;
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO devices (fingerprint, label, ae_title, enrolled_by, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![fingerprint, label, ae_title, enrolled_by, now_unix()],
            )
            .map_err(Error::db)?;
        if n == 0 {
            return Err(Error::Conflict("this certificate is already enrolled".into()));
        }
        Ok(())
    }

    pub fn list_devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT fingerprint, label, ae_title, enrolled_by, revoked FROM devices ORDER BY label")
            .map_err(Error::db)?;
        let rows = st
            .query_map([], |r| {
                Ok(DeviceInfo {
                    fingerprint: r.get(0)?,
                    label: r.get(1)?,
                    ae_title: r.get(2)?,
                    enrolled_by: r.get(3)?,
                    revoked: r.get::<_, i64>(4)? != 0,
                })
            })
            .map_err(Error::db)?;
        rows.collect::<Result<_, _>>().map_err(Error::db)
    }

    /// An enrolled, unrevoked device by certificate fingerprint.
    ///
    /// Asked on every C-STORE and device login: one lookup by primary key, not a scan of
    /// every enrolled device.
    pub fn active_device(&self, fingerprint: &str) -> Result<Option<DeviceInfo>, Error> {
        self.conn()
            .prepare_cached("SELECT fingerprint, label, ae_title, enrolled_by FROM devices WHERE fingerprint = ?1 AND revoked = 0")
            .and_then(|mut st| {
                st.query_row([fingerprint], |r| {
                    Ok(DeviceInfo { fingerprint: r.get(0)?, label: r.get(1)?, ae_title: r.get(2)?, enrolled_by: r.get(3)?, revoked: false })
                })
                .optional()
            })
            .map_err(Error::db)
    }

    /// Revoke a device (by fingerprint, or by label) and every grant it holds.
    pub fn revoke_device(&self, fingerprint_or_label: &str) -> Result<(), Error> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(Error::db)?;
        let fp: Option<String> = tx
            .query_row(
                "SELECT fingerprint FROM devices WHERE fingerprint = ?1 OR label = ?1",
                [fingerprint_or_label],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::db)?;
        let fp = fp.ok_or_else(|| Error::not_found("device"))?;
        tx.execute("UPDATE devices SET revoked = 1 WHERE fingerprint = ?1", [&fp]).map_err(Error::db)?;
        tx.execute("UPDATE grants SET revoked = 1 WHERE subject_kind = 'device' AND subject = ?1", [&fp])
            .map_err(Error::db)?;
        tx.commit().map_err(Error::db)
    }

    /// Create a grant with a fresh random root key, sealed in the database.
    pub fn create_grant(&self, subject: &Subject, expires: i64) -> Result<GrantKey, Error> {
        let grant_id = cleave_keys::random_id128();
        let root_key = Key32::generate();
        let sealed = self.root_kek.seal(SealContext::new("grants", "root_key", &root_ctx_row(&grant_id, subject)), root_key.expose());
        let day = time::OffsetDateTime::now_utc().date().to_string();
        self.conn()
            .execute(
                "INSERT INTO grants (grant_id, subject_kind, subject, root_key_sealed, created_day, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![grant_id, subject.kind(), subject.name(), sealed, day, expires],
            )
            .map_err(Error::db)?;
        Ok(GrantKey { grant_id, subject: subject.clone(), expires, root_key })
    }

    /// A grant's root key, if the grant exists and is neither revoked nor expired.
    pub fn live_grant(&self, grant_id: &str) -> Result<Option<GrantKey>, Error> {
        // Asked on every request: through the statement cache, not parsed again each time.
        let row: Option<(String, String, Vec<u8>, i64, i64)> = self
            .conn()
            .prepare_cached("SELECT subject_kind, subject, root_key_sealed, expires, revoked FROM grants WHERE grant_id = ?1")
            .and_then(|mut st| st.query_row([grant_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).optional())
            .map_err(Error::db)?;
        let Some((kind, name, sealed, expires, revoked)) = row else { return Ok(None) };
        if revoked != 0 || expires <= now_unix() {
            return Ok(None);
        }
        let subject = match kind.as_str() {
            "staff" => Subject::Staff(name),
            "device" => Subject::Device(name),
            _ => return Ok(None),
        };
        let raw = self
            .root_kek
            .open(SealContext::new("grants", "root_key", &root_ctx_row(grant_id, &subject)), &sealed)?;
        let mut bytes: [u8; 32] = raw
            .expose()
            .try_into()
            .map_err(|_| Error::Database("a sealed root key has the wrong length; the database was altered".into()))?;
        Ok(Some(GrantKey { grant_id: grant_id.to_owned(), subject, expires, root_key: Key32::from_bytes(&mut bytes) }))
    }

    pub fn revoke_grant(&self, grant_id: &str) -> Result<(), Error> {
        self.conn().execute("UPDATE grants SET revoked = 1 WHERE grant_id = ?1", [grant_id]).map_err(Error::db)?;
        Ok(())
    }

    /// Record that a share was used; returns false if it has been revoked.
    pub fn touch_share(&self, grant_id: &str, share_id: &str) -> Result<bool, Error> {
        let now = now_unix();
        let c = self.conn();
        c.execute(
            "INSERT INTO shares (grant_id, share_id, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (grant_id, share_id) DO UPDATE SET last_seen = excluded.last_seen",
            params![grant_id, share_id, now],
        )
        .map_err(Error::db)?;
        let revoked: i64 = c
            .query_row("SELECT revoked FROM shares WHERE grant_id = ?1 AND share_id = ?2", [grant_id, share_id], |r| r.get(0))
            .map_err(Error::db)?;
        Ok(revoked == 0)
    }

    pub fn list_shares(&self, grant_id: &str) -> Result<Vec<ShareInfo>, Error> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT share_id, first_seen, last_seen, revoked FROM shares WHERE grant_id = ?1 ORDER BY first_seen, share_id")
            .map_err(Error::db)?;
        let rows = st
            .query_map([grant_id], |r| {
                Ok(ShareInfo { share_id: r.get(0)?, first_seen: r.get(1)?, last_seen: r.get(2)?, revoked: r.get::<_, i64>(3)? != 0 })
            })
            .map_err(Error::db)?;
        rows.collect::<Result<_, _>>().map_err(Error::db)
    }

    /// Revoke one share of a grant. A share not yet seen is recorded as revoked, so a
    /// doctor can revoke a link before the consultant ever uses it.
    pub fn revoke_share(&self, grant_id: &str, share_id: &str) -> Result<(), Error> {
        let now = now_unix();
        self.conn()
            .execute(
                "INSERT INTO shares (grant_id, share_id, first_seen, last_seen, revoked) VALUES (?1, ?2, ?3, ?3, 1)
                 ON CONFLICT (grant_id, share_id) DO UPDATE SET revoked = 1",
                params![grant_id, share_id, now],
            )
            .map_err(Error::db)?;
        Ok(())
    }

    /// The grant a device's DIMSE associations run under: its most recent grant. None if
    /// that grant was revoked (the device, or the holder of its token, withdrew it; a new
    /// device token makes a new grant). A device with no grant yet, or whose latest grant
    /// has expired, gets a new one valid until `expires_if_new`, as fetching a device token
    /// over HTTPS would give it.
    pub fn device_grant(&self, fingerprint: &str, expires_if_new: i64) -> Result<Option<GrantKey>, Error> {
        let latest: Option<(String, i64, i64)> = self
            .conn()
            .query_row(
                "SELECT grant_id, expires, revoked FROM grants WHERE subject_kind = 'device' AND subject = ?1 ORDER BY rowid DESC LIMIT 1",
                [fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(Error::db)?;
        match latest {
            Some((_, _, revoked)) if revoked != 0 => Ok(None),
            Some((grant_id, expires, _)) if expires > now_unix() => self.live_grant(&grant_id),
            _ => self.create_grant(&Subject::Device(fingerprint.to_owned()), expires_if_new).map(Some),
        }
    }

    /// Whether a grant exists and is neither revoked nor expired (without unsealing its key).
    pub fn grant_is_live(&self, grant_id: &str) -> Result<bool, Error> {
        let row: Option<(i64, i64)> = self
            .conn()
            .prepare_cached("SELECT expires, revoked FROM grants WHERE grant_id = ?1")
            .and_then(|mut st| st.query_row([grant_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(Error::db)?;
        Ok(row.is_some_and(|(expires, revoked)| revoked == 0 && expires > now_unix()))
    }
}

fn validate_name(s: &str, what: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!("a {what} must be 1 to 64 characters of letters, digits, '-', '_', '.', '@'")))
    }
}

/// A share id is a client-chosen random string; bound its shape before storing it.
pub(crate) fn valid_share_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn validate_ae_title(s: &str) -> Result<(), Error> {
    // PS3.5: up to 16 characters of the default repertoire, no backslash or control
    // characters; leading/trailing spaces are not significant.
    let t = s.trim();
    if !t.is_empty() && t.len() <= 16 && t.chars().all(|c| c.is_ascii_graphic() && c != '\\' || c == ' ') {
        Ok(())
    } else {
        Err(Error::bad_request("an AE title must be 1 to 16 printable ASCII characters without backslash"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_keys::KeySource;

    fn open() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open_or_create(&dir.path().join("keys/keyring.json"), KeySource::KeyFile(dir.path().join("keys/master.key"))).unwrap();
        let a = Accounts::open(dir.path(), &ring).unwrap();
        (dir, a)
    }

    fn code(a: &NewCredentials, step_offset: i64) -> String {
        let seed = totp_rs::Secret::Encoded(a.totp_base32.to_string()).to_bytes().unwrap();
        totp_for(&seed).unwrap().generate(((now_unix() + 30 * step_offset) as u64 / 30) * 30)
    }

    #[test]
    fn login_checks_password_and_totp_once() {
        let (_d, a) = open();
        let creds = a.add_staff("nurse1", Role::Nurse, "ward-3").unwrap();
        assert!(matches!(a.add_staff("nurse1", Role::Nurse, "ward-3"), Err(Error::Conflict(_))));
        let c = code(&creds, 0);
        assert_eq!(a.check_login("nurse1", "wrong", &c).unwrap(), LoginCheck::Wrong);
        assert_eq!(a.check_login("nobody", &creds.password, &c).unwrap(), LoginCheck::Wrong);
        assert_eq!(a.check_login("nurse1", &creds.password, "000000x").unwrap(), LoginCheck::Wrong);
        assert_eq!(a.check_login("nurse1", &creds.password, &c).unwrap(), LoginCheck::Ok { role: Role::Nurse });
        // The same code again is a replay.
        assert_eq!(a.check_login("nurse1", &creds.password, &c).unwrap(), LoginCheck::Wrong);
        a.disable_staff("nurse1").unwrap();
        assert_eq!(a.check_login("nurse1", &creds.password, &code(&creds, 1)).unwrap(), LoginCheck::Disabled);
    }

    #[test]
    fn grants_seal_root_keys_and_revoke() {
        let (_d, a) = open();
        let g = a.create_grant(&Subject::Staff("doc".into()), now_unix() + 60).unwrap();
        let back = a.live_grant(&g.grant_id).unwrap().unwrap();
        assert_eq!(back.root_key, g.root_key);
        assert!(a.touch_share(&g.grant_id, "s1").unwrap());
        a.revoke_share(&g.grant_id, "s1").unwrap();
        assert!(!a.touch_share(&g.grant_id, "s1").unwrap());
        assert_eq!(a.list_shares(&g.grant_id).unwrap().len(), 1);
        a.revoke_grant(&g.grant_id).unwrap();
        assert!(a.live_grant(&g.grant_id).unwrap().is_none());
        let old = a.create_grant(&Subject::Device("ff".into()), now_unix() - 1).unwrap();
        assert!(a.live_grant(&old.grant_id).unwrap().is_none(), "expired grant");
        // A sealed root key moved to another grant row does not open.
        let g2 = a.create_grant(&Subject::Staff("doc".into()), now_unix() + 60).unwrap();
        let g3 = a.create_grant(&Subject::Staff("doc".into()), now_unix() + 60).unwrap();
        {
            let c = a.conn();
            let sealed: Vec<u8> = c.query_row("SELECT root_key_sealed FROM grants WHERE grant_id = ?1", [&g2.grant_id], |r| r.get(0)).unwrap();
            c.execute("UPDATE grants SET root_key_sealed = ?1 WHERE grant_id = ?2", params![sealed, g3.grant_id]).unwrap();
        }
        assert!(a.live_grant(&g3.grant_id).is_err());
    }

    #[test]
    fn a_device_grant_is_made_once_reused_and_stays_revoked() {
        let (_d, a) = open();
        let fp = "ab".repeat(32);
        let first = a.device_grant(&fp, now_unix() + 60).unwrap().unwrap();
        let again = a.device_grant(&fp, now_unix() + 60).unwrap().unwrap();
        assert_eq!(first.grant_id, again.grant_id, "a second association made a second grant");
        assert!(a.grant_is_live(&first.grant_id).unwrap());
        a.revoke_grant(&first.grant_id).unwrap();
        assert!(!a.grant_is_live(&first.grant_id).unwrap());
        assert!(a.device_grant(&fp, now_unix() + 60).unwrap().is_none(), "a revoked grant was replaced silently");
        // A new token (a new grant) brings the device back; an expired one is renewed.
        let newer = a.create_grant(&Subject::Device(fp.clone()), now_unix() - 1).unwrap();
        let renewed = a.device_grant(&fp, now_unix() + 60).unwrap().unwrap();
        assert_ne!(renewed.grant_id, newer.grant_id);
        assert_ne!(renewed.grant_id, first.grant_id);
    }
}
