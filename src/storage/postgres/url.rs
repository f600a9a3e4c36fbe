//! What a PostgreSQL URL names, for messages and the ready line: user,
//! hosts, ports and database, never the password.

use crate::storage::error::{Result, StorageError};
use tokio_postgres::config::Host;

/// `postgresql://USER@HOST[:PORT][,HOST...]/DB` for `url`, without its
/// password or options; a unix-socket host is given as `?host=DIR`.
pub fn describe_url(url: &str) -> Result<String> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e| StorageError::Refused(format!("invalid PostgreSQL URL: {e}")))?;
    let ports = config.get_ports();
    let port_of = |i: usize| ports.get(i).or(ports.first()).copied();
    let mut tcp = Vec::new();
    let mut sockets = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) => tcp.push(match port_of(i) {
                Some(port) => format!("{name}:{port}"),
                None => name.clone(),
            }),
            Host::Unix(dir) => sockets.push(dir.display().to_string()),
        }
    }
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = config.get_dbname().unwrap_or("");
    let mut out = format!("postgresql://{user}{}/{db}", tcp.join(","));
    if !sockets.is_empty() {
        out.push_str(&format!("?host={}", sockets.join(",")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::describe_url;

    #[test]
    fn passwords_and_options_are_left_out() {
        assert_eq!(
            describe_url("postgresql://app:s3cret@db.example:6543/checkpoints?sslmode=disable").unwrap(),
            "postgresql://app@db.example:6543/checkpoints"
        );
        assert_eq!(
            describe_url("postgresql://postgres@/t1?host=/tmp/cluster").unwrap(),
            "postgresql://postgres@/t1?host=/tmp/cluster"
        );
        assert_eq!(describe_url("postgresql://u:pw@a,b:5433/x").unwrap(), "postgresql://u@a:5432,b:5433/x");
        let described = describe_url("host=h user=u password=pw dbname=d").unwrap();
        assert!(!described.contains("pw"), "{described}");
        assert!(describe_url("postgresql://[::1").is_err());
    }
}
