//! Contracts the control plane and the worker must agree on, in one place: id newtypes,
//! wire limits, the retry schedule and retry decision, notification payloads, text rules
//! (NUL replacement, UTF-8 truncation), the opaque page-token codec, the shape of issued
//! credentials, and how foreign-key checks deferred to COMMIT are planned.
//!
//! Everything here is pure (no I/O, no clock), so it is unit-, property- and fuzz-tested
//! without a database. The `sqlx` feature adds the database encoding of the ids.

pub mod columns;
pub mod credential;
pub mod generation;
pub mod ids;
pub mod key_checks;
pub mod labels;
pub mod limits;
pub mod notify;
pub mod page;
pub mod retry;
pub mod text;
pub mod tools;
