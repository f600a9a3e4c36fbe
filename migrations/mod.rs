//! The on-disk format's upgrade steps, run in order by `storage::migrate`
//! when checkpointd opens a data directory written by an older version.
//!
//! Format 1 was the first released format; format 2 added client keys,
//! namespaces, external ids and pending writes
//! (`v0001_to_v0002_namespaces_and_keys`); format 3 moved large values to
//! state segments and stores times in nanoseconds
//! (`v0002_to_v0003_segments_and_nanoseconds`); format 4 writes each
//! change's intent to the state segments, which the group commit syncs
//! alone (`v0003_to_v0004_intents_in_segments`). `checkpoint-dump` runs the same
//! steps on its private copy of an older directory to read it. The runner
//! itself is proven by `tests/migrations.rs` with test-only steps beyond the
//! current format (on a copy of the fixture migrated to it), and
//! `tests/fixtures/v1/`, `v2/` and `v3/` are directories written in formats
//! 1, 2 and 3 that every later version must migrate intact (`tests/migrations.rs`
//! checks format 2's migration of v1 record by record).
//!
//! # Changing the format
//!
//! 1. Add one file per step, named `v0001_to_v0002_<what>.rs`, starting with
//!    a doc comment that says what changed and why. It exports one
//!    `pub const STEP: Step` whose `run` reads the directory as version 1
//!    left it and stages the new shape in the `StepWrite`; the runner applies
//!    it together with the new version in one transaction. Keep the step
//!    self-contained (its own copies of old record shapes): later code will
//!    not know them.
//! 2. Declare it below (`mod v0001_to_v0002_<what>;`), append its `STEP` to
//!    [`STEPS`], and bump `CURRENT_FORMAT` in `src/storage/migrate.rs` (and
//!    `codec::RECORD_FORMAT` if the record encoding changed). If the
//!    `Counters` record changes, make `storage::datadir::read_mark` read the
//!    old shape too: `checkpointd.counters` beside `db` holds the same record
//!    and is checked right after the migration, before the store rewrites it.
//! 3. Add `tests/fixtures/v<new>/` with the fixture command in
//!    `docs/operations.md`, and keep every older fixture: each must still
//!    open intact.

use super::Step;

mod v0001_to_v0002_namespaces_and_keys;
mod v0002_to_v0003_segments_and_nanoseconds;
mod v0003_to_v0004_intents_in_segments;

/// Every step, in order: `STEPS[i].from == i + 1`.
pub static STEPS: &[Step] = &[
    v0001_to_v0002_namespaces_and_keys::STEP,
    v0002_to_v0003_segments_and_nanoseconds::STEP,
    v0003_to_v0004_intents_in_segments::STEP,
];
