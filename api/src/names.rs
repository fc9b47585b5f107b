//! Name checks shared by the CNI plugin, the agent and the records: one
//! definition, so the plugin refuses exactly what the agent would.

/// The CNI spec's identifier syntax (container IDs, network names): an
/// ASCII letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn is_spec_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A container ID: the spec's identifier syntax, at most 253 characters
/// (it becomes an etcd key segment and a file name).
pub fn check_container_id(id: &str) -> Result<(), &'static str> {
    if id.len() > 253 {
        Err("it is longer than 253 characters")
    } else if !is_spec_identifier(id) {
        Err("it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'")
    } else {
        Ok(())
    }
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, without `/`,
/// `:` or whitespace.
pub fn check_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 characters");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not interface names");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("an interface name has no `/`, `:` or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        check_container_id("abc-1_2.3").unwrap();
        for bad in ["", "-x", "a/b", "a b", "é"] {
            assert!(
                check_container_id(bad).unwrap_err().contains("start"),
                "{bad}"
            );
        }
        assert!(check_container_id(&"a".repeat(254))
            .unwrap_err()
            .contains("253"));
        check_interface_name("eth0").unwrap();
        for bad in ["", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(check_interface_name(bad).is_err(), "{bad}");
        }
    }
}
