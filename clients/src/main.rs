//! `cleave`: glue between the command line (cli.rs) and the client library.
#![forbid(unsafe_code)]

mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use cleave_client::{
    collect_files, make_share, parse_lifetime, push, qr_text, share_url, verify_audit, Client, Error, IdentityQuery, Profile,
    ProfileDir, PushOutcome, Result, Session, ShareRequest, ShareTarget,
};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use cli::*;

fn main() {
    let cli = Cli::parse();
    let json = cli.global.json;
    if let Err(e) = run(cli) {
        if json {
            println!("{}", json!({"error": {"code": e.code(), "message": e.to_string()}}));
        } else {
            eprintln!("error: {e}");
        }
        std::process::exit(e.exit_code());
    }
}

/// Print `v` as JSON, or `human` otherwise.
fn out(g: &Global, v: &Value, human: impl FnOnce() -> String) {
    if g.json {
        println!("{v}");
    } else {
        let h = human();
        if !h.is_empty() {
            println!("{h}");
        }
    }
}

fn dir(g: &Global) -> Result<ProfileDir> {
    ProfileDir::new(g.config_dir.clone(), &g.profile)
}

/// The profile's client with the token: `--token`/`CLEAVE_TOKEN`, else the stored one.
fn connect(g: &Global) -> Result<(Client, ProfileDir)> {
    let pd = dir(g)?;
    let p = pd.load()?;
    let c = client_for(&p)?;
    let token = match &g.token {
        Some(t) => Zeroizing::new(t.trim().to_owned()),
        None => {
            let s = pd.load_session()?.ok_or(Error::NoToken)?;
            Zeroizing::new(s.token.clone())
        }
    };
    Ok((c.with_token(token), pd))
}

fn client_for(p: &Profile) -> Result<Client> {
    let id = match (&p.cert, &p.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    Client::new(&p.server, &p.ca, id)
}

fn prompt(what: &str) -> Result<String> {
    rpassword::prompt_password(format!("{what}: "))
        .map_err(|_| Error::Usage(format!("cannot read the {what} from the terminal; pass it with the flag or environment variable")))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Profile(ProfileCmd::Set { server, ca, cert, key, consultant }) => {
            let pd = dir(g)?;
            let abs = |p: std::path::PathBuf| std::path::absolute(&p).unwrap_or(p);
            let p = Profile { server, ca: abs(ca), cert: cert.map(abs), key: key.map(abs), consultant };
            pd.save(&p)?;
            out(g, &json!({"profile": pd.name(), "saved": true}), || format!("profile '{}' saved", pd.name()));
        }
        Command::Profile(ProfileCmd::Show) => {
            let p = dir(g)?.load()?;
            let v = serde_json::to_value(&p).unwrap_or_default();
            out(g, &v, || pretty(&v));
        }
        Command::Login(a) => {
            let pd = dir(g)?;
            let c = client_for(&pd.load()?)?;
            let s: Session = if a.device {
                c.device_token()?
            } else {
                let password = Zeroizing::new(match a.password {
                    Some(p) => p,
                    None => prompt("password")?,
                });
                let totp = Zeroizing::new(match a.totp {
                    Some(t) => t,
                    None => prompt("one-time code")?,
                });
                let user = a.username.as_deref().ok_or_else(|| Error::Usage("give --username (or CLEAVE_USERNAME)".into()))?;
                c.login(user, &password, totp.trim())?
            };
            pd.save_session(&s)?;
            let v = json!({"role": s.role, "expires": s.expires, "can_share": s.share_base.is_some()});
            out(g, &v, || format!("logged in as {} ({}), token valid until {}", a.username.as_deref().filter(|_| !a.device).unwrap_or("device"), s.role, s.expires));
        }
        Command::Logout => {
            let (c, pd) = connect(g)?;
            c.revoke_current_grant()?;
            pd.clear_session()?;
            out(g, &json!({"logged_out": true}), || "logged out; the token and every share made from it no longer work".into());
        }
        Command::Share(a) => share(g, a)?,
        Command::Shares(SharesCmd::List) => {
            let (c, _) = connect(g)?;
            let list = c.shares()?;
            let v = serde_json::to_value(&list).unwrap_or_default();
            out(g, &v, || {
                if list.is_empty() {
                    return "no share of this login has been used yet".into();
                }
                let mut s = format!("{:<32}  {:<20}  {:<20}  {}", "SHARE ID", "FIRST USED", "LAST USED", "STATE");
                for i in &list {
                    s.push_str(&format!(
                        "\n{:<32}  {:<20}  {:<20}  {}",
                        i.share_id,
                        unix_to_text(i.first_seen),
                        unix_to_text(i.last_seen),
                        if i.revoked { "revoked" } else { "active" }
                    ));
                }
                s
            });
        }
        Command::Shares(SharesCmd::Revoke { share_id }) => {
            let (c, _) = connect(g)?;
            c.revoke_share(&share_id)?;
            out(g, &json!({"revoked": share_id}), || format!("share {share_id} revoked; the consultant's next request will be refused"));
        }
        Command::Grant(GrantCmd::Revoke) => {
            let (c, _) = connect(g)?;
            c.revoke_current_grant()?;
            out(g, &json!({"revoked": true}), || "grant revoked: this token and every share made from it no longer work".into());
        }
        Command::Consult(a) => consult(g, a)?,
        Command::Push(a) => push_cmd(g, a)?,
        Command::Register(a) => {
            let (c, _) = connect(g)?;
            let body = json!({"family_name": a.family, "given_name": a.given, "birth_date": a.birth_date, "sex": a.sex, "issuer": a.issuer, "patient_id": a.patient_id});
            let v = c.register_identity(&body)?;
            out(g, &v, || format!("registered; pseudonym {}", v["pseudonym"].as_str().unwrap_or("?")));
        }
        Command::Lookup(a) => lookup(g, a)?,
        Command::Note(NoteCmd::Add { pseudonym, text, study }) => {
            let (c, _) = connect(g)?;
            let v = c.add_note(&pseudonym, &text, study.as_deref())?;
            out(g, &v, || format!("note {} added", v["note_id"].as_str().unwrap_or("?")));
        }
        Command::Note(NoteCmd::List { pseudonym }) => {
            let (c, _) = connect(g)?;
            let v = c.notes(&pseudonym)?;
            out(g, &v, || pretty(&v));
        }
        Command::Observation(ObservationCmd::Set { pseudonym, code, value, unit }) => {
            let (c, _) = connect(g)?;
            let v = c.set_observation(&pseudonym, &code, observation_value(&value), unit.as_deref())?;
            out(g, &v, || format!("observation {} recorded", v["observation_id"].as_str().unwrap_or("?")));
        }
        Command::Observation(ObservationCmd::List { pseudonym }) => {
            let (c, _) = connect(g)?;
            let v = c.observations(&pseudonym)?;
            out(g, &v, || pretty(&v));
        }
        Command::Audit(cmd) => audit(g, cmd)?,
        Command::Admin(cmd) => admin(g, cmd)?,
        Command::Retrieve(a) => {
            let (c, _) = connect(g)?;
            retrieve(g, &c, &a.study_uid, &a.out)?;
        }
        Command::Research(ResearchCmd::Export(a)) => research_export_cmd(g, a)?,
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "cleave", &mut std::io::stdout());
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .map_err(|e| Error::Usage(format!("cannot render the man page: {e}")))?;
            std::io::stdout().write_all(&buf).map_err(|e| Error::Usage(format!("cannot write the man page: {e}")))?;
        }
    }
    Ok(())
}

fn unix_to_text(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

fn observation_value(s: &str) -> Value {
    if let Ok(n) = s.parse::<f64>() {
        return json!(n);
    }
    match s {
        "true" => return json!(true),
        "false" => return json!(false),
        _ => {}
    }
    let b = s.as_bytes();
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' && s.bytes().filter(u8::is_ascii_digit).count() == 8 {
        return json!({"date": s});
    }
    json!(s)
}

fn share(g: &Global, a: ShareArgs) -> Result<()> {
    let pd = dir(g)?;
    let p = pd.load()?;
    let session = pd.load_session()?.ok_or(Error::NoToken)?;
    let base = session
        .share_base
        .as_deref()
        .ok_or_else(|| Error::Usage("this login cannot share (only doctors receive a share base); log in with a doctor's account".into()))?;
    let target = match (&a.patient, &a.study) {
        (Some(pt), None) => ShareTarget::patient(pt)?,
        (None, Some(st)) => ShareTarget::study(st)?,
        _ => return Err(Error::Usage("give exactly one of --patient or --study".into())),
    };
    let bind = match &a.bind_cert {
        Some(pem) => Some(cleave_client::cert_sha256(pem)?),
        None => None,
    };
    let req = ShareRequest { target, lifetime: parse_lifetime(&a.expires)?, include_identity: a.include_identity, bind_cert_sha256: bind };
    let s = make_share(base, &req, std::time::SystemTime::now())?;
    let consultant = p.consultant.clone().unwrap_or_else(|| p.server.clone());
    let url = share_url(&consultant, &s.token);
    let expires = time::OffsetDateTime::from(s.expires)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let stores = if a.include_identity { "identity,clinical" } else { "clinical" };
    if g.json {
        println!(
            "{}",
            json!({"share_id": s.share_id, "token": s.token.as_str(), "url": url, "expires": expires, "ops": "read", "stores": stores})
        );
        return Ok(());
    }
    println!("share {}: read only, {stores}, until {expires}", s.share_id);
    if !a.no_qr {
        println!("{}", qr_text(&s.token)?);
    }
    println!("token: {}", s.token.as_str());
    println!("link:  {url}");
    println!("revoke with: cleave shares revoke {}", s.share_id);
    Ok(())
}

fn consult(g: &Global, a: ConsultArgs) -> Result<()> {
    let token = match (&a.link, &g.token) {
        (Some(link), _) => link
            .split_once("#token=")
            .map(|(_, t)| t.to_owned())
            .ok_or_else(|| Error::Usage("the link has no #token= part; paste the whole link the doctor sent".into()))?,
        (None, Some(t)) => t.clone(),
        (None, None) => return Err(Error::Usage("give the shared token with --token, CLEAVE_TOKEN or --link".into())),
    };
    let c = Client::new(&a.url, &a.ca, None)?.with_token(Zeroizing::new(token.trim().to_owned()));
    match a.what {
        ConsultCmd::Patient { pseudonym } => {
            let summary = c.clinical_summary(&pseudonym)?;
            out(g, &summary, || pretty(&summary));
        }
        ConsultCmd::Notes { pseudonym } => {
            let v = c.notes(&pseudonym)?;
            out(g, &v, || pretty(&v));
        }
        ConsultCmd::Study { study_uid } => {
            let v = c.study(&study_uid)?;
            out(g, &v, || pretty(&v));
        }
        ConsultCmd::Retrieve { study_uid, out: dir } => retrieve(g, &c, &study_uid, &dir)?,
        ConsultCmd::Identity { identity_id } => {
            let v = c.identity(&identity_id)?;
            out(g, &v, || pretty(&v));
        }
    }
    Ok(())
}

/// Writes each retrieved instance to `instance-NNNNN.dcm` in a directory as it streams
/// in: into a temporary file, fsync'd and renamed when the part is complete, so a file with
/// the final name is always a whole instance. Files are named by position, not by UID: a
/// UID in a file name would leak into directory listings and backups.
struct DirSink {
    dir: PathBuf,
    current: Option<(std::fs::File, PathBuf)>,
    written: usize,
    bytes: u64,
    bar: indicatif::ProgressBar,
}

impl DirSink {
    fn io(&self, action: &'static str, path: &Path, e: std::io::Error) -> Error {
        Error::Io { action, path: path.to_owned(), source: e }
    }
}

impl cleave_client::PartSink for DirSink {
    fn start(&mut self, _headers: &str) -> Result<()> {
        let target = self.dir.join(format!("instance-{:05}.dcm", self.written + 1));
        let tmp = cleave_keys::durable::temp_path_for(&target);
        let f = cleave_keys::durable::create_new_with_mode(&tmp, 0o600).map_err(|e| self.io("creating", &tmp, e))?;
        self.current = Some((f, tmp));
        Ok(())
    }
    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let Some((f, tmp)) = self.current.as_mut() else { return Err(Error::Protocol("multipart data outside a part".into())) };
        f.write_all(bytes).map_err(|e| Error::Io { action: "writing", path: tmp.clone(), source: e })?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        let Some((f, tmp)) = self.current.take() else { return Err(Error::Protocol("multipart part ended twice".into())) };
        f.sync_all().map_err(|e| self.io("syncing", &tmp, e))?;
        drop(f);
        self.written += 1;
        let target = self.dir.join(format!("instance-{:05}.dcm", self.written));
        std::fs::rename(&tmp, &target).map_err(|e| self.io("renaming", &target, e))?;
        cleave_keys::durable::fsync_dir(&self.dir).map_err(|e| self.io("syncing", &self.dir, e))?;
        self.bar.inc(1);
        Ok(())
    }
}

impl Drop for DirSink {
    fn drop(&mut self) {
        // An instance cut short is not left behind looking like data.
        if let Some((f, tmp)) = self.current.take() {
            drop(f);
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn retrieve(g: &Global, c: &Client, study: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))?;
    // The count is only for the progress bar: a token that may not search gets a spinner.
    let count = c.study_instance_count(study).ok().flatten();
    let bar = match count {
        Some(n) => progress(g, n),
        None if g.json => indicatif::ProgressBar::hidden(),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let mut sink = DirSink { dir: dir.to_owned(), current: None, written: 0, bytes: 0, bar };
    let restored = c.retrieve_study_into(study, &mut sink)?;
    sink.bar.finish_and_clear();
    let (n, bytes) = (sink.written, sink.bytes);
    out(g, &json!({"instances": n, "bytes": bytes, "dir": dir, "identity_restored": restored}), || {
        let who = if restored { "with the patient's identity" } else { "de-identified" };
        format!("{n} instances ({bytes} bytes, {who}) written to {}", dir.display())
    });
    Ok(())
}

fn research_export_cmd(g: &Global, a: ExportArgs) -> Result<()> {
    let (c, _) = connect(g)?;
    let sel = cleave_client::ExportSelection {
        study: a.study,
        modality: a.modality,
        from: a.from,
        to: a.to,
        body_part: a.body_part,
        shift_dates: a.shift_dates,
    };
    let bar = progress(g, 0);
    let r = cleave_client::research_export(&c, &sel, &a.out, &mut |done, total| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let dates = if r.dates_shifted { "shifted" } else { "removed" };
    let v = json!({"instances": r.instances, "withheld": r.withheld, "bytes": r.bytes, "dir": a.out, "dates": dates});
    out(g, &v, || {
        format!(
            "{} instances ({} bytes) written to {}; {} withheld as not for research; dates {dates}",
            r.instances,
            r.bytes,
            a.out.display(),
            r.withheld
        )
    });
    Ok(())
}

fn progress(g: &Global, len: u64) -> indicatif::ProgressBar {
    if g.json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}

fn push_cmd(g: &Global, a: PushArgs) -> Result<()> {
    let (c, pd) = connect(g)?;
    let files = collect_files(&a.path)?;
    let bar = progress(g, files.len() as u64);
    let reports = push(&c, &pd.state_dir()?, &files, a.restart, |r, _| {
        bar.inc(1);
        if !g.json {
            let line = match &r.outcome {
                PushOutcome::Skipped => "skipped (sent before)".to_owned(),
                PushOutcome::Stored => "stored".to_owned(),
                PushOutcome::AlreadyStored => "already stored".to_owned(),
                PushOutcome::Rejected { reason } => format!("rejected ({reason})"),
            };
            bar.println(format!("{}: {line}", r.path.display()));
        }
    })?;
    bar.finish_and_clear();
    let rejected = reports.iter().filter(|r| matches!(r.outcome, PushOutcome::Rejected { .. })).count();
    let v = serde_json::to_value(&reports).unwrap_or_default();
    out(g, &json!({"files": v}), || format!("{} files, {} rejected", reports.len(), rejected));
    if rejected > 0 {
        return Err(Error::Usage(format!("{rejected} file(s) were rejected; fix them and run `cleave push` again (the others are not resent)")));
    }
    Ok(())
}

fn lookup(g: &Global, a: LookupArgs) -> Result<()> {
    let (c, _) = connect(g)?;
    let q = IdentityQuery { name: a.name, family: a.family, given: a.given, birth_date: a.birth_date, patient_id: a.patient_id, issuer: a.issuer };
    // Request one: the identity vault. Request two (per pseudonym): the clinical store.
    // The join happens here, on the client, never on the server.
    let ids = c.search_identities(&q)?;
    let patients = ids["patients"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for p in &patients {
        let mut clinical = Vec::new();
        for ps in p["pseudonyms"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            clinical.push(match c.clinical_summary(ps) {
                Ok(v) => v,
                Err(e) => json!({"error": {"code": e.code(), "message": e.to_string()}}),
            });
        }
        rows.push(json!({"identity": p, "clinical": clinical}));
    }
    let v = json!({"patients": rows});
    out(g, &v, || {
        if rows.is_empty() {
            return "no patient matches".into();
        }
        let mut s = String::new();
        for r in &rows {
            let id = &r["identity"];
            s.push_str(&format!(
                "{}, {}  born {}  sex {}\n",
                id["family_name"].as_str().unwrap_or(""),
                id["given_name"].as_str().unwrap_or(""),
                id["birth_date"].as_str().unwrap_or(""),
                id["sex"].as_str().unwrap_or("")
            ));
            for cl in r["clinical"].as_array().into_iter().flatten() {
                if let Some(m) = cl["error"]["message"].as_str() {
                    s.push_str(&format!("  clinical: {m}\n"));
                    continue;
                }
                for st in cl["studies"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "  study {} {} {} ({} series, {} instances)\n",
                        st["study_date"].as_str().unwrap_or(""),
                        st["modalities"],
                        st["description"].as_str().unwrap_or(""),
                        st["series_count"],
                        st["instance_count"]
                    ));
                }
                for n in cl["notes"].as_array().into_iter().flatten() {
                    s.push_str(&format!("  note: {}\n", n["text"].as_str().unwrap_or("")));
                }
            }
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

fn audit(g: &Global, cmd: AuditCmd) -> Result<()> {
    let (c, pd) = connect(g)?;
    let (v, title) = match cmd {
        AuditCmd::Tail { limit } => {
            // The newest `limit` entries: learn the size, then read from there.
            let size = c.audit_entries(&[("limit", "1".to_owned())])?["tree_size"].as_u64().unwrap_or(0);
            let mut f = vec![("limit", limit.to_string())];
            if size > u64::from(limit) {
                f.push(("after", (size - u64::from(limit) - 1).to_string()));
            }
            let mut v = c.audit_entries(&f)?;
            // The tail is "the latest"; its own reads always make the log a little longer.
            v["next"] = Value::Null;
            (v, None)
        }
        AuditCmd::Filter { after, limit, account, operation, outcome, patient } => {
            let mut f = Vec::new();
            if let Some(x) = after {
                f.push(("after", x.to_string()));
            }
            if let Some(x) = limit {
                f.push(("limit", x.to_string()));
            }
            for (k, x) in [("account", account), ("operation", operation), ("outcome", outcome), ("patient", patient)] {
                if let Some(x) = x {
                    f.push((k, x));
                }
            }
            (c.audit_entries(&f)?, None)
        }
        AuditCmd::WhoAccessed { pseudonym } => {
            // Every page: an auditor asking "who" wants the whole answer, not the first 100.
            let mut all = Vec::new();
            let mut f = vec![("patient", pseudonym), ("limit", "1000".to_owned())];
            loop {
                let page = c.audit_entries(&f)?;
                all.extend(page["entries"].as_array().cloned().unwrap_or_default());
                match page["next"].as_u64() {
                    Some(n) if n > 0 => {
                        f.retain(|(k, _)| *k != "after");
                        f.push(("after", (n - 1).to_string()));
                    }
                    _ => break,
                }
            }
            (json!({ "entries": all, "next": null }), Some("accesses to this patient's records (identity and clinical side), oldest first"))
        }
        AuditCmd::Verify => {
            let r = verify_audit(&c, &pd.state_dir()?)?;
            let v = serde_json::to_value(&r).unwrap_or_default();
            out(g, &v, || match r.previous_size {
                Some(p) => format!(
                    "audit log consistent: grew from {p} to {} entries; {} new entries checked against the signed root",
                    r.size, r.entries_checked
                ),
                None => format!(
                    "audit log checkpoint of {} entries saved (first verification; key pinned; {} entries checked against the signed root)",
                    r.size, r.entries_checked
                ),
            });
            return Ok(());
        }
    };
    out(g, &v, || audit_table(&v, title));
    Ok(())
}

/// Entries as a table, one line each; resources are keyed references, shown as a count.
fn audit_table(v: &Value, title: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(t) = title {
        s.push_str(t);
        s.push('\n');
    }
    s.push_str(&format!("{:>6}  {:<24}  {:<32}  {:<17}  {:<28}  {}", "INDEX", "TIME", "ACTOR", "OPERATION", "OUTCOME", "RESOURCES"));
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    for e in &entries {
        let outcome = match (e["outcome"]["result"].as_str(), e["outcome"]["kind"].as_str()) {
            (Some(r), Some(k)) => format!("{r} ({k})"),
            (Some(r), None) => r.to_owned(),
            _ => String::new(),
        };
        s.push_str(&format!(
            "\n{:>6}  {:<24}  {:<32}  {:<17}  {:<28}  {}",
            e["index"].as_u64().map(|i| i.to_string()).unwrap_or_default(),
            e["time"].as_str().unwrap_or(""),
            format!("{}/{}", e["actor"]["kind"].as_str().unwrap_or(""), e["actor"]["name"].as_str().unwrap_or("")),
            e["op"].as_str().unwrap_or(""),
            outcome,
            e["resources"].as_array().map_or(0, Vec::len)
        ));
    }
    if entries.is_empty() {
        s.push_str("\n(no entries)");
    }
    if let Some(n) = v["next"].as_u64() {
        s.push_str(&format!("\nmore: continue with --after {}", n.saturating_sub(1)));
    }
    s
}

fn admin(g: &Global, cmd: AdminCmd) -> Result<()> {
    let (c, _) = connect(g)?;
    match cmd {
        AdminCmd::Users(UsersCmd::List) => {
            let v = c.users()?;
            out(g, &v, || {
                let mut s = format!("{:<20}  {:<14}  {:<14}  {}", "USERNAME", "ROLE", "DEPARTMENT", "STATE");
                for u in v.as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n{:<20}  {:<14}  {:<14}  {}",
                        u["username"].as_str().unwrap_or(""),
                        u["role"].as_str().unwrap_or(""),
                        u["department"].as_str().unwrap_or(""),
                        if u["disabled"].as_bool() == Some(true) { "disabled" } else { "active" }
                    ));
                }
                s
            });
        }
        AdminCmd::Users(UsersCmd::Add { username, role, department }) => {
            let v = c.add_user(&username, &role, &department)?;
            out(g, &v, || {
                format!(
                    "account {username} created. Hand over, once, in person:\n  password: {}\n  TOTP seed (base32): {}",
                    v["password"].as_str().unwrap_or(""),
                    v["totp_secret"].as_str().unwrap_or("")
                )
            });
        }
        AdminCmd::Users(UsersCmd::Disable { username }) => {
            c.disable_user(&username)?;
            out(g, &json!({"disabled": username}), || format!("account {username} disabled; its tokens no longer work"));
        }
        AdminCmd::Devices(DevicesCmd::List) => {
            let v = c.devices()?;
            out(g, &v, || {
                let mut s = format!("{:<16}  {:<20}  {:<16}  {}", "FINGERPRINT", "LABEL", "AE TITLE", "STATE");
                for d in v.as_array().into_iter().flatten() {
                    let fp = d["fingerprint"].as_str().unwrap_or("");
                    s.push_str(&format!(
                        "\n{:<16}  {:<20}  {:<16}  {}",
                        fp.get(..16).unwrap_or(fp),
                        d["label"].as_str().unwrap_or(""),
                        d["ae_title"].as_str().unwrap_or(""),
                        if d["revoked"].as_bool() == Some(true) { "revoked" } else { "active" }
                    ));
                }
                s
            });
        }
        AdminCmd::Devices(DevicesCmd::Revoke { fingerprint }) => {
            c.revoke_device(&fingerprint)?;
            out(g, &json!({"revoked": true}), || "device revoked; its tokens no longer work".into());
        }
        AdminCmd::Review(ReviewCmd::List) => {
            let v = c.review_queue()?;
            out(g, &v, || pretty(&v));
        }
        AdminCmd::Review(ReviewCmd::Resolve { item_id, action, keep }) => {
            let v = c.resolve_review(&item_id, &action, keep.as_deref())?;
            out(g, &v, || format!("review item resolved ({action})"));
        }
    }
    Ok(())
}
