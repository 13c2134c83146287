//! What the two stores' versioned schemas share: a migration step that declares from
//! which schema version code can still use its result, what a start found, and the one
//! rule that decides whether a schema newer than this binary may be served (rolling
//! upgrades: docs/operations.md).

/// One step of a schema, from version i to i + 1 (i = its index in its list).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub sql: &'static str,
    /// The oldest schema version whose tagcast can still use the database once this step
    /// has run: 1 while steps only add (tables, columns with defaults, indexes); a step
    /// older code cannot live with (a dropped or renamed column, a changed meaning) must
    /// raise it.
    pub usable_from: u32,
}

/// What a start found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub from: u32,
    pub to: u32,
    /// The schema is newer than this binary and declares itself usable by it.
    pub ahead: bool,
}

impl MigrationReport {
    /// The log line a start owes the operator, if any.
    pub fn log(&self, store: &str, understood: u32) {
        if self.ahead {
            tracing::warn!(
                schema = self.from,
                understood,
                "the {store}'s schema is newer than this tagcast, and declares itself usable by it: serving it unchanged"
            );
        } else if self.from != self.to {
            tracing::info!(
                from = self.from,
                to = self.to,
                "migrated the {store}'s schema"
            );
        }
    }
}

/// What the database records after `migrations` ran: the highest `usable_from`.
pub fn usable_from(migrations: &[Migration]) -> u32 {
    migrations.iter().map(|m| m.usable_from).max().unwrap_or(1)
}

/// A schema at `version` (newer than the `known` steps of this binary) that records
/// `usable` (`None`: usable only by its own version): served unchanged, or refused naming
/// both versions. `what` names the store ("the data directory", "the database").
pub fn serve_newer(
    what: &str,
    version: u32,
    usable: Option<u32>,
    known: u32,
    remedy: &str,
) -> Result<MigrationReport, String> {
    let usable = usable.unwrap_or(version);
    if usable > known {
        return Err(format!(
            "{what} has schema version {version}, newer than this tagcast understands ({known}), \
             and it needs a tagcast that understands schema {usable} or newer; {remedy}"
        ));
    }
    Ok(MigrationReport {
        from: version,
        to: version,
        ahead: true,
    })
}
