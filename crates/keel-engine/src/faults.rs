//! Injected faults, for fault-injection tests of a real `keel` process: the `KEEL_FAULTS`
//! environment variable makes named supervised tasks panic when they start.
//!
//! `KEEL_FAULTS=TASK=COUNT[,TASK=COUNT…]`: the supervised task named `TASK` (see
//! `supervisor.rs`, e.g. `subscription/billing/dispatcher`) panics on each of its first
//! `COUNT` starts (`always`: on every start). Read once, at the first supervised start;
//! without the variable this costs one check of an empty map per task start. Never set it in
//! production: it exists to prove that supervision contains a failing task.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the faults to inject.
pub const FAULTS_VARIABLE: &str = "KEEL_FAULTS";

/// How many more starts of each named task panic (`u64::MAX`: every start).
fn planned() -> &'static Mutex<HashMap<String, u64>> {
    static PLANNED: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    PLANNED.get_or_init(|| {
        let text = std::env::var(FAULTS_VARIABLE).unwrap_or_default();
        let planned = parse(&text).unwrap_or_else(|error| {
            tracing::error!(variable = FAULTS_VARIABLE, %error, "ignoring the injected faults");
            HashMap::new()
        });
        if !planned.is_empty() {
            tracing::warn!(variable = FAULTS_VARIABLE, faults = %text, "injecting faults: for tests only");
        }
        Mutex::new(planned)
    })
}

/// Reads `TASK=COUNT,…`.
fn parse(text: &str) -> Result<HashMap<String, u64>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|fault| !fault.is_empty())
        .map(|fault| {
            let (task, count) = fault
                .split_once('=')
                .ok_or_else(|| format!("{fault:?} is not TASK=COUNT"))?;
            let count = match count {
                "always" => u64::MAX,
                count => count
                    .parse()
                    .map_err(|_| format!("{fault:?}: the count is a number or \"always\""))?,
            };
            Ok((task.to_owned(), count))
        })
        .collect()
}

/// Panics when a fault is planned for this start of `task`.
pub(crate) fn maybe_panic_at_start(task: &str) {
    let mut planned = planned().lock().expect("faults lock");
    let Some(remaining) = planned.get_mut(task).filter(|remaining| **remaining > 0) else {
        return;
    };
    if *remaining != u64::MAX {
        *remaining -= 1;
    }
    drop(planned);
    panic!("injected fault ({FAULTS_VARIABLE}): task {task} panics at start");
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the variable's syntax is read as documented, and a bad entry says what is wrong.
    #[test]
    fn faults_are_parsed() {
        let planned = parse("a/b=3, c=always,").unwrap();
        assert_eq!(planned.get("a/b"), Some(&3));
        assert_eq!(planned.get("c"), Some(&u64::MAX));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("a").unwrap_err().contains("TASK=COUNT"));
        assert!(parse("a=x").unwrap_err().contains("number"));
    }
}
