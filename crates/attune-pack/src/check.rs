//! What makes an action's definition valid, apart from its files: the directory loader (`load`)
//! runs these checks on every action, and adds what needs the files (the entry point exists, stays
//! inside the pack once symlinks are followed, is executable). The server loads packs only through
//! that loader, from its own `packs.dirs`.

use std::path::Path;

use attune_core::{action::BUILTINS, Action, PackRef, Runtime};

use crate::schema::ParamValidator;

/// One problem with an action: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

fn problem(field: &'static str, message: impl Into<String>) -> Problem {
    Problem { field, message: message.into() }
}

/// Whether `ep` is a relative path that stays inside the directory it is resolved in.
pub fn entry_point_is_contained(ep: &str) -> bool {
    let p = Path::new(ep);
    !ep.is_empty()
        && !p.is_absolute()
        && !p.components().any(|c| matches!(c, std::path::Component::ParentDir))
}

/// A problem with a parameter schema (it must compile, as an object schema).
pub fn check_parameters(schema: &serde_json::Value) -> Option<Problem> {
    ParamValidator::compile(schema).err().map(|e| problem("parameters", e))
}

/// Every problem with one action of `pack`.
pub fn check_action(pack: &PackRef, a: &Action) -> Vec<Problem> {
    let mut out = Vec::new();
    if a.pack != *pack || a.action_ref.pack() != *pack {
        out.push(problem(
            "ref",
            format!("{} belongs to pack {}, but this is pack {pack}", a.action_ref, a.action_ref.pack()),
        ));
    }
    if a.runtime == Runtime::Builtin {
        if !BUILTINS.contains(&a.entry_point.as_str()) {
            out.push(problem(
                "entry_point",
                format!("unknown builtin {:?}; builtins are: {}", a.entry_point, BUILTINS.join(", ")),
            ));
        }
    } else if a.runtime == Runtime::Inquiry {
        if a.entry_point != "ask" {
            out.push(problem("entry_point", "an inquiry action's entry_point is \"ask\""));
        }
    } else if !entry_point_is_contained(&a.entry_point) {
        out.push(problem("entry_point", "must be a relative path inside the pack's actions/ directory"));
    }
    out.extend(check_parameters(&a.parameters));
    if a.timeout_seconds == Some(0) {
        out.push(problem("timeout_seconds", "must be at least 1"));
    } else if let Err(e) = attune_core::submission::check_timeout(a.timeout_seconds) {
        out.push(problem("timeout_seconds", e));
    }
    if a.retry.backoff_seconds > attune_core::submission::MAX_BACKOFF_SECONDS {
        let max = attune_core::submission::MAX_BACKOFF_SECONDS;
        out.push(problem("retry", format!("backoff_seconds must be at most {max}")));
    }
    let max = attune_core::submission::MAX_ATTEMPTS_LIMIT;
    if a.retry.max_attempts == 0 {
        out.push(problem("retry", "max_attempts must be at least 1"));
    } else if a.retry.max_attempts > max {
        out.push(problem("retry", format!("max_attempts must be at most {max}")));
    }
    for (field, text) in [("description", &a.description), ("entry_point", &a.entry_point)] {
        if let Some(p) = check_text(field, text) {
            out.push(p);
        }
    }
    out
}

/// Text a database column holds: no NUL (PostgreSQL cannot store it), no other control character
/// than tab and newline.
fn check_text(field: &'static str, text: &str) -> Option<Problem> {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
        .then(|| problem(field, "must not contain control characters (NUL included)"))
}
