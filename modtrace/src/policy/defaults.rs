//! The policy `watch` uses when given none (policy/default.toml).

/// The embedded default policy's text, as `policy show-default` prints it.
pub const DEFAULT_POLICY: &str = include_str!("default.toml");

/// The default policy's rule that denies the CIS Linux Benchmark's modules.
pub const CIS_RULE: &str = "cis-denied-module";

/// The modules of the CIS deny list, as the default policy names them
/// (normalised, `_` for `-`): one list for `watch --enforce` and `audit`.
pub fn cis_deny_list() -> Vec<String> {
    let policy: toml::Table =
        toml::from_str(DEFAULT_POLICY).expect("the embedded default policy is TOML");
    policy["rule"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| rule.get("id").and_then(toml::Value::as_str) == Some(CIS_RULE))
        .filter_map(|rule| rule.get("when")?.get("module")?.as_array())
        .flatten()
        .filter_map(toml::Value::as_str)
        .map(|name| super::event::normalise_module_name(name).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cis_list_is_read_from_the_default_policy() {
        let list = super::cis_deny_list();
        assert_eq!(list.len(), 13, "{list:?}");
        assert!(list.contains(&"usb_storage".to_owned()));
        assert!(list.contains(&"firewire_core".to_owned()));
    }
}
