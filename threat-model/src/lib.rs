//! Cleave's threat model.
//!
//! This crate has no code of its own: `THREATS.md` says what Cleave defends against, and
//! the integration tests in `tests/` try each attack on the real broker and stores.
//! `tests/threats_doc.rs` keeps the two in step: every threat names its attack test, and
//! every attack test is named by a threat. Run the suite alone with
//! `cargo test -p threat-model`.
#![forbid(unsafe_code)]
