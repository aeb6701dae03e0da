//! `target_session_attrs`: which server of a host list a session may stay on, and what it
//! looks at on the server.

/// Which server of a `host=` list a session may stay on, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// One that accepts writes (`transaction_read_only` off): after a failover, the new primary.
    ReadWrite,
    /// One that does not accept writes.
    ReadOnly,
    /// One not in recovery.
    Primary,
    /// One in recovery (a hot standby).
    Standby,
    /// A standby if any is up, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            _ => return None,
        })
    }

    /// How many times the host list is walked: `prefer-standby` walks it for a standby first,
    /// then for any server.
    pub fn rounds(self) -> usize {
        if self == Self::PreferStandby {
            2
        } else {
            1
        }
    }

    /// Whether a session on a server in `state` may be kept in walk `round` (from 0).
    pub fn accepts(self, state: ServerState, round: usize) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !state.read_only,
            Self::ReadOnly => state.read_only,
            Self::Primary => !state.in_recovery,
            Self::Standby => state.in_recovery,
            Self::PreferStandby => round > 0 || state.in_recovery,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

/// What `target_session_attrs` looks at on a server it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// `transaction_read_only` (a standby's sessions are read-only too).
    pub read_only: bool,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

impl ServerState {
    /// The SQL that reads it: two columns, `on`/`off` and `true`/`false`.
    pub const SQL: &'static str =
        "SELECT current_setting('transaction_read_only'), pg_is_in_recovery()::text";

    /// From the values the server reports at start-up (Postgres 14 and later report both), or
    /// `None` when it reports neither.
    pub fn reported(params: &std::collections::HashMap<String, String>) -> Option<Self> {
        let on = |k: &str| params.get(k).map(|v| v == "on");
        let standby = on("in_hot_standby")?;
        Some(ServerState {
            read_only: standby || on("default_transaction_read_only")?,
            in_recovery: standby,
        })
    }

    /// "a standby", "read-only" or "read-write", for messages.
    pub fn describe(self) -> &'static str {
        if self.in_recovery {
            "a standby"
        } else if self.read_only {
            "read-only"
        } else {
            "read-write"
        }
    }

    /// From a row of [`ServerState::SQL`].
    pub fn of_row(read_only: &str, in_recovery: &str) -> Self {
        ServerState {
            read_only: read_only == "on",
            in_recovery: in_recovery == "true",
        }
    }
}
