//! The `format` member of the JSON keel stores (topic and subscription metadata, checkpoints,
//! dead-letter records): which layout a record has, so that a later keel can still read old
//! records and an older keel refuses new ones instead of misreading them.

/// The layout this keel writes.
pub(crate) const FORMAT: u64 = 1;

/// The format of a record written before formats were recorded (serde's default).
pub(crate) fn unrecorded() -> u64 {
    1
}

/// Fails, saying what to do, when a record has a format this keel does not know.
pub(crate) fn check(format: u64) -> Result<(), String> {
    if format == FORMAT {
        return Ok(());
    }
    Err(format!(
        "format {format} is unknown to this keel (it knows {FORMAT}); run the keel version that wrote it"
    ))
}
