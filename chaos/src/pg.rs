//! PostgreSQL addresses: where a `KEEL_PG_URL` server listens, and the same
//! connection through a fault proxy's port on loopback.

use std::net::SocketAddr;

use tokio_postgres::config::Host;

/// Where `url`'s server listens (a TCP host is required: the proxy forwards
/// TCP).
pub async fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("KEEL_PG_URL: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        other => return Err(format!("KEEL_PG_URL must name a TCP host, got {other:?}")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("KEEL_PG_URL: resolving {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("KEEL_PG_URL: {host} has no address"))
}

/// `url` pointed at `port` on 127.0.0.1 instead: user, password and database
/// kept, a short connect timeout so a partitioned connect fails and retries.
pub fn via_port(url: &str, port: u16) -> Result<String, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("KEEL_PG_URL: {e}"))?;
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    let mut out =
        format!("host=127.0.0.1 port={port} user='{user}' dbname='{db}' connect_timeout=2");
    if let Some(pw) = config.get_password() {
        let pw = String::from_utf8_lossy(pw)
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        out.push_str(&format!(" password='{pw}'"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_through_a_proxy_keeps_its_user_and_database() {
        let via = via_port("postgres://alice:s'cret@db.example:6543/app", 7000).expect("url");
        assert_eq!(
            via,
            "host=127.0.0.1 port=7000 user='alice' dbname='app' connect_timeout=2 password='s\\'cret'"
        );
        let _: tokio_postgres::Config = via.parse().expect("parses back");
    }
}
