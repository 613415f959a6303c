//! The daemon's one error type, in pingora's shape: what went wrong ([`Kind`]), who is at fault,
//! whether trying again can succeed, the underlying cause, and context saying where.
//!
//! Error *replies* to clients and workers are a different thing, the wire contract of
//! [`codex_bus_protocol::ErrorKind`]; this type is for what the daemon itself cannot do (start,
//! bind, spawn). Its fault decides how loudly it is logged.

use std::borrow::Cow;
use std::fmt;

pub use codex_bus_protocol::Fault;

/// The exit status for an unusable configuration: `EX_CONFIG` of BSD's sysexits.h, which service
/// managers know (systemd's `RestartPreventExitStatus=78` in docs/deploy/codex-stdio-bus.service),
/// so a daemon that cannot start until someone edits its config is not restarted in a loop.
pub const EX_CONFIG: u8 = 78;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The configuration (file, flags, built-in default) is unusable.
    Config,
    /// A listener could not be bound to a valid address (it is in use).
    Bind,
    /// The metrics recorder could not be installed.
    Metrics,
    /// The process environment refused something the daemon needs (signal handlers, runtime).
    Environment,
    /// A worker process could not be started.
    Spawn,
    /// The admin endpoint of another daemon could not be asked or did not answer sensibly.
    Admin,
}

impl Kind {
    /// Who is at fault, and whether the same attempt may succeed later.
    ///
    /// One row per kind, so the columns cannot drift apart.
    fn row(self) -> (&'static str, Fault, bool) {
        match self {
            // The operator's input: nothing changes until they change it.
            Kind::Config => ("config", Fault::Client, false),
            // An address in use now may be free in a moment (a previous daemon still draining).
            Kind::Bind => ("bind", Fault::Bus, true),
            Kind::Metrics => ("metrics", Fault::Bus, false),
            Kind::Environment => ("environment", Fault::Bus, false),
            // A worker program that fails to start may start next time (fds, memory).
            Kind::Spawn => ("spawn", Fault::Worker, true),
            Kind::Admin => ("admin", Fault::Bus, true),
        }
    }

    /// A short lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }
}

/// An error of the daemon.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    context: Cow<'static, str>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind`; `context` says what was being done, in the operator's terms.
    pub fn new(kind: Kind, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: None,
        }
    }

    /// An error of `kind` caused by `cause`.
    pub fn because(
        kind: Kind,
        context: impl Into<Cow<'static, str>>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: Some(cause.into()),
        }
    }

    /// A listener at the address `context` names could not be bound: [`Kind::Bind`] when the
    /// address is in use (a previous daemon may still be draining; retrying can succeed), else
    /// [`Kind::Config`] (no such address here, a bad port, no permission: the operator's to fix).
    pub fn bind(context: impl Into<Cow<'static, str>>, cause: std::io::Error) -> Self {
        let kind = match cause.kind() {
            std::io::ErrorKind::AddrInUse => Kind::Bind,
            _ => Kind::Config,
        };
        Error::because(kind, context, cause)
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        self.kind.row().1
    }

    /// The process exit status for a daemon stopped by this error (docs/operations.md, "Exit
    /// statuses"): [`EX_CONFIG`] for [`Kind::Config`], which no restart can fix, else 1.
    pub fn exit_status(&self) -> u8 {
        match self.kind {
            Kind::Config => EX_CONFIG,
            _ => 1,
        }
    }

    /// Whether the same attempt may succeed if made again later.
    pub fn retryable(&self) -> bool {
        self.kind.row().2
    }

    /// Logs the error at the level its fault calls for: the daemon's own failures are errors, a
    /// worker's are warnings (the supervisor copes), the operator's input is reported as a warning
    /// too. Returns whether the log filter let the line through.
    pub fn log(&self) -> bool {
        let (kind, retryable) = (self.kind.as_str(), self.retryable());
        match self.fault() {
            Fault::Bus => {
                tracing::error!(kind, retryable, "{self}");
                tracing::enabled!(tracing::Level::ERROR)
            }
            Fault::Worker | Fault::Client => {
                tracing::warn!(kind, retryable, "{self}");
                tracing::enabled!(tracing::Level::WARN)
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_and_cause_make_the_message_and_the_kind_decides_fault_and_retry() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let error = Error::because(Kind::Bind, "cannot listen on TCP 127.0.0.1:1", io);
        assert!(error
            .to_string()
            .starts_with("cannot listen on TCP 127.0.0.1:1: "));
        assert_eq!(error.fault(), Fault::Bus);
        assert!(error.retryable());
        assert!(std::error::Error::source(&error).is_some());
        let invalid = std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let bad_port = Error::bind("cannot listen on TCP 127.0.0.1:99999", invalid);
        assert_eq!(
            (bad_port.fault(), bad_port.retryable()),
            (Fault::Client, false)
        );
        let busy = Error::bind("x", std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert_eq!(busy.kind(), Kind::Bind);
        let config = Error::new(Kind::Config, "pools[0].command: not found");
        assert_eq!(config.to_string(), "pools[0].command: not found");
        assert_eq!((config.fault(), config.retryable()), (Fault::Client, false));
        assert_eq!(config.exit_status(), EX_CONFIG);
        assert_eq!(busy.exit_status(), 1);
    }
}
