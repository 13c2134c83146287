//! `tagcast check`'s report, shared by both backends: one line per check, each ok, a
//! warning (something an operator should know, not damage) or a failure.

use std::fmt::Write as _;

use crate::config::TagLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warning,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub check: &'static str,
    pub detail: String,
}

/// Everything one run of `tagcast check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Ok, check, detail);
    }

    pub fn warn(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Warning, check, detail);
    }

    pub fn fail(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Failed, check, detail);
    }

    /// Ok when `count` is 0, the given status with `what` otherwise.
    pub fn expect_none(
        &mut self,
        check: &'static str,
        count: i64,
        status: Status,
        what: impl FnOnce(i64) -> String,
    ) {
        if count == 0 {
            self.ok(check, "none");
        } else {
            self.push(status, check, what(count));
        }
    }

    fn push(&mut self, status: Status, check: &'static str, detail: impl Into<String>) {
        self.findings.push(Finding {
            status,
            check,
            detail: detail.into(),
        });
    }

    pub fn failures(&self) -> usize {
        self.count(Status::Failed)
    }

    pub fn warnings(&self) -> usize {
        self.count(Status::Warning)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// The report as the command prints it, one finding per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let label = match f.status {
                Status::Ok => "ok     ",
                Status::Warning => "warning",
                Status::Failed => "FAILED ",
            };
            let _ = writeln!(out, "  {label} {:<14} {}", f.check, f.detail);
        }
        out
    }
}

/// Whether a stored tag key could have been written through the API (the same rules the
/// decoder applies); `None` when it could.
pub fn bad_key(key: &str, limits: &TagLimits) -> Option<String> {
    if key.is_empty() || key.len() > limits.max_key_bytes {
        return Some(format!(
            "{} bytes (allowed 1..={})",
            key.len(),
            limits.max_key_bytes
        ));
    }
    if key.contains(':') {
        return Some("contains ':'".into());
    }
    if key.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    None
}
