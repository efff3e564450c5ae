//! Roles and what each may do. The table here is the single source of truth: tokens are
//! minted with caveats derived from it, and `broker/ROLES.md` is checked against it by a
//! test.
//!
//! A role is never consulted when a request is checked: only the token's caveats are.
//! That is what makes a shared, attenuated token safe: it carries its own limits, and a
//! share can only remove operations or stores from the sharer's set, never add them.
//!
//! Operations and stores are `cleave-tokens`' own ([`Op`], [`Store`]). Its grammar has no
//! store for the broker's records (accounts, devices, keys), so administration is checked
//! as `admin` on `audit`: the broker's own records. A token's `ops` and `stores` caveats
//! form a product (any listed op on any listed store); where a role's row is not a
//! product (the doctor: write clinical but not identity), [`Role::allows`] is checked as
//! well, as a ceiling on top of the caveats.
use cleave_tokens::{Op, Store};
use serde::{Deserialize, Serialize};

/// A staff or device role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// An imaging device: appends instances, never reads (not even its own).
    Modality,
    Nurse,
    Doctor,
    /// Registration and administrative staff: identity only.
    Registration,
    /// IT administrator: accounts, devices, keys; no clinical reading.
    ItAdmin,
    Auditor,
    Researcher,
}

impl Role {
    pub const ALL: [Role; 7] =
        [Role::Modality, Role::Nurse, Role::Doctor, Role::Registration, Role::ItAdmin, Role::Auditor, Role::Researcher];

    pub fn name(self) -> &'static str {
        match self {
            Role::Modality => "modality",
            Role::Nurse => "nurse",
            Role::Doctor => "doctor",
            Role::Registration => "registration",
            Role::ItAdmin => "it-admin",
            Role::Auditor => "auditor",
            Role::Researcher => "researcher",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The (operation, store) pairs this role's tokens allow.
    pub fn permissions(self) -> &'static [(Op, Store)] {
        use Op::*;
        match self {
            Role::Modality => &[(Append, Store::Clinical)],
            Role::Nurse => &[(Read, Store::Identity), (Read, Store::Clinical)],
            Role::Doctor => &[
                (Read, Store::Identity),
                (Share, Store::Identity),
                (Read, Store::Clinical),
                (Write, Store::Clinical),
                (Share, Store::Clinical),
            ],
            Role::Registration => &[(Read, Store::Identity), (Write, Store::Identity)],
            Role::ItAdmin => &[(Admin, Store::Audit)],
            Role::Auditor => &[(Audit, Store::Audit)],
            Role::Researcher => &[(Export, Store::Clinical)],
        }
    }

    /// Whether the table allows `op` on `store` for this role.
    pub fn allows(self, op: Op, store: Store) -> bool {
        self.permissions().contains(&(op, store))
    }

    /// The operations this role's tokens carry in their `ops` caveat.
    pub fn ops(self) -> Vec<Op> {
        let mut v: Vec<Op> = Vec::new();
        for (o, _) in self.permissions() {
            if !v.contains(o) {
                v.push(*o);
            }
        }
        v
    }

    /// The stores this role's tokens carry in their `stores` caveat.
    pub fn stores(self) -> Vec<Store> {
        let mut v: Vec<Store> = Vec::new();
        for (_, s) in self.permissions() {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }

    /// Whether the ops × stores product of this role's caveats equals its table row. A
    /// token's caveats are a product (any listed op on any listed store), so a role whose
    /// row is not a product would get more than the table says; this is tested for all.
    pub fn caveats_are_exact(self) -> bool {
        let ops = self.ops();
        let stores = self.stores();
        ops.iter().all(|o| stores.iter().all(|s| self.permissions().contains(&(*o, *s))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_table_row_is_expressible_as_ops_times_stores() {
        // Doctor: read/write/share × identity/clinical would let a doctor write identity;
        // the table says write clinical only, so this must catch it.
        let exact: Vec<_> = Role::ALL.into_iter().filter(|r| !r.caveats_are_exact()).collect();
        assert_eq!(exact, vec![Role::Doctor], "only roles listed here need per-store op caveats");
    }

    /// broker/ROLES.md and the top-level README show the table; both must say what the
    /// code does.
    #[test]
    fn roles_md_matches_the_table() {
        for doc in ["/ROLES.md", "/../README.md"] {
            roles_doc_matches(doc);
        }
    }

    fn roles_doc_matches(doc: &str) {
        let md = std::fs::read_to_string(format!("{}{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let stores = [Store::Identity, Store::Clinical, Store::Audit];
        for role in Role::ALL {
            let cells: Vec<String> = stores
                .iter()
                .map(|st| {
                    let ops: Vec<&str> =
                        role.permissions().iter().filter(|(_, s)| s == st).map(|(o, _)| o.as_str()).collect();
                    if ops.is_empty() { "—".to_owned() } else { ops.join(", ") }
                })
                .collect();
            let row = format!("| {} | {} |", role.name(), cells.join(" | "));
            assert!(md.contains(&row), "{doc} must carry the row `{row}`");
        }
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("consultant"), None);
    }
}
