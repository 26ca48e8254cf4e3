//! The policy `watch` uses when given none (policy/default.toml).

/// The embedded default policy's text, as `policy show-default` prints it.
pub const DEFAULT_POLICY: &str = include_str!("default.toml");
