//! The table of Actions: names, the Version, and what the limiter and the gateway need to
//! know of each (its default QPS, whether it is a read).

/// The only API version there is.
pub const VERSION: &str = "2020-12-01";

/// The table of Actions. A name that is not here is answered by the gateway with
/// `InvalidActionOrVersion` ([`Action::from_name`] returns `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    BatchUpdateUserTags,
    RegisterUsers,
    UnRegisterUsers,
    BatchGetUser,
    BatchUpdateUser,
    CountAudience,
    ListAudience,
    UserBroadcast,
    ListUserBroadcasts,
    GetBroadcast,
    ListBroadcasts,
    RecallBroadcast,
    ListEvents,
    ListApps,
    ListTags,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::BatchUpdateUserTags,
        Action::RegisterUsers,
        Action::UnRegisterUsers,
        Action::BatchGetUser,
        Action::BatchUpdateUser,
        Action::CountAudience,
        Action::ListAudience,
        Action::UserBroadcast,
        Action::ListUserBroadcasts,
        Action::GetBroadcast,
        Action::ListBroadcasts,
        Action::RecallBroadcast,
        Action::ListEvents,
        Action::ListApps,
        Action::ListTags,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::BatchUpdateUserTags => "BatchUpdateUserTags",
            Action::RegisterUsers => "RegisterUsers",
            Action::UnRegisterUsers => "UnRegisterUsers",
            Action::BatchGetUser => "BatchGetUser",
            Action::BatchUpdateUser => "BatchUpdateUser",
            Action::CountAudience => "CountAudience",
            Action::ListAudience => "ListAudience",
            Action::UserBroadcast => "UserBroadcast",
            Action::ListUserBroadcasts => "ListUserBroadcasts",
            Action::GetBroadcast => "GetBroadcast",
            Action::ListBroadcasts => "ListBroadcasts",
            Action::RecallBroadcast => "RecallBroadcast",
            Action::ListEvents => "ListEvents",
            Action::ListApps => "ListApps",
            Action::ListTags => "ListTags",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|a| a.name()).collect()
    }

    /// Reads change nothing; their default QPS is the vendor's read limit, and they are
    /// what a key of role `read` may call (API.md §11).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Action::BatchGetUser
                | Action::CountAudience
                | Action::ListAudience
                | Action::ListUserBroadcasts
                | Action::GetBroadcast
                | Action::ListBroadcasts
                | Action::ListEvents
                | Action::ListApps
                | Action::ListTags
        )
    }

    /// The default requests per second of this Action when `limits.actions` does not name
    /// it: the vendor's 100 for reads, `write_qps` (the configured `limits.qps`, 50 by
    /// default) for writes.
    pub fn default_qps(self, write_qps: u32) -> u32 {
        if self.is_read() { 100 } else { write_qps }
    }
}
