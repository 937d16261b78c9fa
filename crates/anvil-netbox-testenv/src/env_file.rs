//! The `KEY=value` files instance.sh writes (DIR/env).

use std::collections::HashMap;

/// Parses `KEY=value` lines; blank lines and `#` comments are skipped, one
/// pair of surrounding double quotes is removed from a value.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.trim().to_owned(), value.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_instance_sh_writes() {
        let vars = parse_env_file(
            "NETBOX_URL=http://127.0.0.1:39369\n\
             NETBOX_TOKEN_V2=nbt_pUobbKWdAcpO.IcQ9IoURQG0B87hNJJ9YU9vkhgJ9csFAwBdDelvP\n\
             \n# comment\n\
             NETBOX_PIDS=\"5424 5434 5435\"\n",
        );
        assert_eq!(vars["NETBOX_URL"], "http://127.0.0.1:39369");
        assert_eq!(
            vars["NETBOX_TOKEN_V2"],
            "nbt_pUobbKWdAcpO.IcQ9IoURQG0B87hNJJ9YU9vkhgJ9csFAwBdDelvP"
        );
        assert_eq!(vars["NETBOX_PIDS"], "5424 5434 5435");
        assert_eq!(vars.len(), 3);
    }

    #[test]
    fn keeps_equals_signs_inside_values_and_skips_garbage() {
        let vars = parse_env_file("A=b=c\nnot a pair\nB=\"unterminated\n");
        assert_eq!(vars["A"], "b=c");
        assert_eq!(vars["B"], "\"unterminated");
        assert_eq!(vars.len(), 2);
    }
}
