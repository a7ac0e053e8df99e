//! The server list (`nats://a:4222,nats://b:4222`): credentials in the URLs are taken out, so
//! neither the client (whose debug log prints addresses) nor a message ever shows them.

use std::fmt;

use async_nats::ServerAddr;

/// A credential: its `Debug` shows no more than that it is one.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Credentials carried by the URLs: `nats://USER:PASSWORD@HOST` or `nats://TOKEN@HOST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `USER:PASSWORD@`.
    UserPassword(String, Secret),
    /// `TOKEN@` (a user name without a password, as NATS clients read it).
    Token(Secret),
}

/// The servers to connect to, without credentials.
#[derive(Clone, Debug)]
pub struct Servers {
    /// The addresses the client gets.
    pub addrs: Vec<ServerAddr>,
    /// What messages show: the URLs without credentials, comma-separated.
    pub shown: String,
    /// Credentials found in the URLs (the same in each URL that has any).
    pub credentials: Option<UrlCredentials>,
}

/// Parses a comma-separated list of server URLs (`nats://`, `tls://`, `ws://`, `wss://`, or
/// `host:port`).
pub fn parse(list: &str) -> Result<Servers, String> {
    let mut servers = Servers {
        addrs: Vec::new(),
        shown: String::new(),
        credentials: None,
    };
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| format!("NATS server {:?}: {e}", without_credentials(url)))?;
        let credentials = match (addr.username(), addr.password()) {
            (None, _) => None,
            (Some(user), Some(password)) => Some(UrlCredentials::UserPassword(
                percent_decode(user),
                Secret::new(percent_decode(password)),
            )),
            (Some(token), None) => Some(UrlCredentials::Token(Secret::new(percent_decode(token)))),
        };
        if let Some(credentials) = credentials {
            match &servers.credentials {
                Some(earlier) if *earlier != credentials => {
                    return Err("the NATS server URLs carry different credentials".into());
                }
                _ => servers.credentials = Some(credentials),
            }
        }
        let host = match addr.host() {
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_owned(),
        };
        let bare = format!("{}://{host}:{}", addr.scheme(), addr.port());
        if !servers.shown.is_empty() {
            servers.shown.push(',');
        }
        servers.shown.push_str(&bare);
        servers.addrs.push(
            bare.parse()
                .map_err(|e| format!("NATS server {bare:?}: {e}"))?,
        );
    }
    if servers.addrs.is_empty() {
        return Err("no NATS server given".into());
    }
    Ok(servers)
}

/// `url` with whatever stands before the host's `@` replaced, for a message about a URL
/// that does not parse.
fn without_credentials(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, host)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{host}"),
            None => format!("…@{host}"),
        },
        None => url.to_owned(),
    }
}

/// Decodes `%XX` escapes (URL user info is kept encoded); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_and_credentials_taken_out() {
        let s = parse("nats://kiln:p%40ss%2Fw@a:4222, tls://b:4223,c").unwrap();
        assert_eq!(s.shown, "nats://a:4222,tls://b:4223,nats://c:4222");
        assert_eq!(s.addrs.len(), 3);
        assert!(s.addrs.iter().all(|a| a.username().is_none()));
        assert_eq!(
            s.credentials,
            Some(UrlCredentials::UserPassword(
                "kiln".into(),
                Secret::new("p@ss/w")
            ))
        );
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn a_user_without_password_is_a_token() {
        let s = parse("nats://s3cr3t@127.0.0.1:4222").unwrap();
        assert_eq!(
            s.credentials,
            Some(UrlCredentials::Token(Secret::new("s3cr3t")))
        );
        assert_eq!(s.shown, "nats://127.0.0.1:4222");
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(
            parse("nats://[::1]:4222").unwrap().shown,
            "nats://[::1]:4222"
        );
    }

    #[test]
    fn bad_lists_are_errors_that_show_no_credentials() {
        assert_eq!(parse(" , ").unwrap_err(), "no NATS server given");
        let err = parse("nats://u:hunter2@a:99999").unwrap_err();
        assert!(err.contains("nats://…@a:99999"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(parse("http://a:4222").is_err());
        let err = parse("nats://u:p1@a:4222,nats://u:p2@b:4222").unwrap_err();
        assert_eq!(err, "the NATS server URLs carry different credentials");
    }
}
