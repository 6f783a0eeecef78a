//! Why a record was dead-lettered: the value of its `sluice.error.reason`
//! header, as a type.
//!
//! A reason is one of three kinds: the plugin failed on the record (it
//! trapped, ran out of time or memory, broke the contract), the host refused
//! the record or what the plugin made of it, or the plugin rejected it with
//! a code of its own (`missing_field`). The host's codes are a small fixed
//! set that a plugin cannot give; decisions (what counts as a plugin
//! failure, which codes keep their own metric label, what fails a reload
//! probe) are made on the kind, never on the text.

use std::fmt;

/// The plugin failed on the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginFailure {
    /// The plugin trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// The call ran past `limits.timeout_ms`.
    Timeout,
    /// The instance would have grown past `limits.memory_mib`.
    OutOfMemory,
    /// More outputs, effects or result bytes than the stage's limits allow.
    OutputLimit,
    /// The plugin broke the contract (a wrong number of outcomes, an invalid
    /// reason code).
    Contract,
}

/// The host refused the record, or what a stage made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostRefusal {
    /// The stage's circuit breaker is open after repeated failures.
    CircuitOpen,
    /// The input is larger than `source.max_record_bytes`.
    RecordTooLarge,
    /// An output is larger than the producer's `message.max.bytes`.
    OutputTooLarge,
    /// An output names a route not declared in `[routes]`.
    UnknownRoute,
    /// An effect writes a Redis key outside the stage's `writes`.
    EffectDenied,
    /// Redis refused one of the record's effects.
    EffectFailed,
    /// PostgreSQL refused one of the record's rows.
    RowRefused,
    /// The broker refused one of the record's outputs for good, other than
    /// for its size (for example no key on a compacted topic).
    OutputRefused,
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The plugin failed on it.
    Plugin(PluginFailure),
    /// The host refused it.
    Host(HostRefusal),
    /// The plugin rejected it with its own code.
    Code(String),
}

impl PluginFailure {
    /// Every failure, for tests and documentation.
    pub const ALL: [Self; 5] = [Self::Trap, Self::Timeout, Self::OutOfMemory, Self::OutputLimit, Self::Contract];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "plugin_trap",
            Self::Timeout => "plugin_timeout",
            Self::OutOfMemory => "plugin_oom",
            Self::OutputLimit => "plugin_output_limit",
            Self::Contract => "plugin_contract",
        }
    }
}

impl HostRefusal {
    /// Every refusal, for tests and documentation.
    pub const ALL: [Self; 8] = [
        Self::CircuitOpen,
        Self::RecordTooLarge,
        Self::OutputTooLarge,
        Self::UnknownRoute,
        Self::EffectDenied,
        Self::EffectFailed,
        Self::RowRefused,
        Self::OutputRefused,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::RecordTooLarge => "record_too_large",
            Self::OutputTooLarge => "output_too_large",
            Self::UnknownRoute => "unknown_route",
            Self::EffectDenied => "effect_denied",
            Self::EffectFailed => "effect_failed",
            Self::RowRefused => "row_refused",
            Self::OutputRefused => "output_refused",
        }
    }
}

impl Reason {
    /// The reason a header value or a plugin's code stands for: one of the
    /// host's codes, or else the plugin's own.
    pub fn of(code: &str) -> Self {
        if let Some(failure) = PluginFailure::ALL.into_iter().find(|f| f.as_str() == code) {
            return Self::Plugin(failure);
        }
        if let Some(refusal) = HostRefusal::ALL.into_iter().find(|r| r.as_str() == code) {
            return Self::Host(refusal);
        }
        Self::Code(code.to_string())
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Plugin(failure) => failure.as_str(),
            Self::Host(refusal) => refusal.as_str(),
            Self::Code(code) => code,
        }
    }

    /// Whether the stage's plugin is at fault rather than the record's data:
    /// it failed, or its circuit breaker was open. These count as
    /// `plugin_failures` and fail a reload's probe.
    pub fn is_plugin_failure(&self) -> bool {
        matches!(self, Self::Plugin(_) | Self::Host(HostRefusal::CircuitOpen))
    }

    /// Whether the host gave the reason (a code from a small fixed set, so
    /// it always keeps its own metric label).
    pub fn is_hosts(&self) -> bool {
        !matches!(self, Self::Code(_))
    }

    /// Whether a plugin may give `code` as its own: snake_case of at most
    /// `max_len` characters, outside the `plugin_` namespace the host keeps
    /// for its failures and other than `circuit_open` (the codes that count
    /// as [`Self::is_plugin_failure`]).
    pub fn is_valid_own_code(code: &str, max_len: usize) -> bool {
        code.len() <= max_len
            && code.starts_with(|c: char| c.is_ascii_lowercase())
            && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !code.starts_with("plugin_")
            && !Self::of(code).is_plugin_failure()
    }
}

impl From<PluginFailure> for Reason {
    fn from(failure: PluginFailure) -> Self {
        Self::Plugin(failure)
    }
}

impl From<HostRefusal> for Reason {
    fn from(refusal: HostRefusal) -> Self {
        Self::Host(refusal)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hosts_code_reads_back_as_itself() {
        let all = (PluginFailure::ALL.map(Reason::from).into_iter()).chain(HostRefusal::ALL.map(Reason::from));
        for reason in all {
            assert_eq!(Reason::of(reason.as_str()), reason);
            assert!(reason.is_hosts(), "{reason}");
        }
        assert_eq!(Reason::of("missing_field"), Reason::Code("missing_field".into()));
    }

    #[test]
    fn plugin_failures_are_the_plugins_faults_and_the_open_breaker() {
        let failures: Vec<String> = (PluginFailure::ALL.map(Reason::from).into_iter())
            .chain(HostRefusal::ALL.map(Reason::from))
            .filter(Reason::is_plugin_failure)
            .map(|r| r.as_str().to_string())
            .collect();
        assert_eq!(
            failures,
            ["plugin_trap", "plugin_timeout", "plugin_oom", "plugin_output_limit", "plugin_contract", "circuit_open"]
        );
        assert!(!Reason::of("invalid_json").is_plugin_failure());
        assert!(!Reason::Host(HostRefusal::EffectFailed).is_plugin_failure());
    }

    #[test]
    fn a_plugin_cannot_give_the_codes_of_plugin_failures() {
        assert!(Reason::is_valid_own_code("missing_field", 48));
        assert!(Reason::is_valid_own_code("code_40", 48));
        for taken in ["circuit_open", "plugin_trap", "plugin_anything"] {
            assert!(!Reason::is_valid_own_code(taken, 48), "{taken}");
        }
        for malformed in ["", "Missing", "1st", "has space", "x-y"] {
            assert!(!Reason::is_valid_own_code(malformed, 48), "{malformed:?}");
        }
        assert!(!Reason::is_valid_own_code(&"a".repeat(49), 48));
    }
}
