//! Cross-repository mounts on a registry with token auth. oci-client asks a token server for
//! one repository per token, but such a registry mounts a blob only for a token that also
//! grants `pull` on the source repository: this asks for both scopes in one token and sends
//! the mount request with it, leaving oci-client's own tokens alone.

use std::time::{Duration, Instant};

/// The longest a mount token is reused, whatever lifetime the token server grants.
const REUSE_AT_MOST: Duration = Duration::from_secs(60);

/// A token and how long it may be reused.
#[derive(Clone)]
pub(super) struct Token {
    value: String,
    fetched: Instant,
    reuse_for: Duration,
}

impl Token {
    /// `value`, to be reused for `reuse_for` from now.
    pub(super) fn new(value: String, reuse_for: Duration) -> Token {
        Token {
            value,
            fetched: Instant::now(),
            reuse_for,
        }
    }

    /// The token itself.
    pub(super) fn value(&self) -> &str {
        &self.value
    }

    /// True while the token is young enough to use again (half its granted lifetime, at
    /// most a minute).
    pub(super) fn fresh(&self) -> bool {
        self.fetched.elapsed() < self.reuse_for
    }
}

/// The HTTP client for token and mount requests, with the registry client's timeouts.
pub(super) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// The parameters of a `WWW-Authenticate: Bearer realm="..",service=".."` challenge.
#[derive(Debug, PartialEq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

/// Parses a Bearer challenge; `None` for any other scheme, or without a realm.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut chars = params.chars().peekable();
    loop {
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        match chars.next() {
            Some('=') => {}
            // A parameter without a value.
            Some(_) => continue,
            None => break,
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value: String = if chars.next_if_eq(&'"').is_some() {
            let quoted: String = std::iter::from_fn(|| chars.next_if(|c| *c != '"')).collect();
            chars.next_if_eq(&'"')?;
            quoted
        } else {
            std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned()
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
        // Up to and past the next comma.
        while chars.next_if(|c| *c != ',').is_some() {}
        if chars.next().is_none() {
            break;
        }
    }
    Some(Challenge {
        realm: realm?,
        service,
    })
}

/// Fetches a token granting `pull,push` on `target` and `pull` on `from` from the token
/// server that `registry_url` (`scheme://host[:port]`) names in its challenge.
pub(super) async fn fetch(
    http: &reqwest::Client,
    registry_url: &str,
    (user, password): (&str, &str),
    target: &str,
    from: &str,
) -> Result<Token, String> {
    let probe = http
        .get(format!("{registry_url}/v2/"))
        .send()
        .await
        .map_err(|e| format!("probe {registry_url}/v2/: {e}"))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge)
        .ok_or("the registry sent no Bearer challenge")?;
    let mut params = vec![
        ("scope", format!("repository:{target}:pull,push")),
        ("scope", format!("repository:{from}:pull")),
    ];
    if let Some(service) = challenge.service {
        params.push(("service", service));
    }
    let url = reqwest::Url::parse_with_params(&challenge.realm, &params)
        .map_err(|e| format!("token realm {:?}: {e}", challenge.realm))?;
    // The password goes to the realm: never in clear text for a registry spoken to over TLS.
    if registry_url.starts_with("https:") && url.scheme() != "https" {
        return Err(format!(
            "token realm {} is not HTTPS; credentials are not sent there",
            challenge.realm
        ));
    }
    let answer = http
        .get(url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| format!("token request: {e}"))?;
    let status = answer.status();
    let body = answer
        .bytes()
        .await
        .map_err(|e| format!("token answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("token server answered HTTP {status}"));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| format!("token answer is not JSON: {e}"))?;
    // The spec's default lifetime is 60 s.
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60));
    let value = answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "token answer holds no token".to_owned())?;
    Ok(Token {
        value,
        fetched: Instant::now(),
        reuse_for: (lifetime / 2).min(REUSE_AT_MOST),
    })
}

/// Asks the registry to mount `digest` from `from` into `target` with `token`: true when it
/// did (201). When it answers 202 it opened an upload instead; that upload is cancelled.
pub(super) async fn mount(
    http: &reqwest::Client,
    registry_url: &str,
    token: &Token,
    target: &str,
    from: &str,
    digest: &str,
) -> Result<bool, String> {
    let url = reqwest::Url::parse_with_params(
        &format!("{registry_url}/v2/{target}/blobs/uploads/"),
        &[("mount", digest), ("from", from)],
    )
    .map_err(|e| format!("mount URL: {e}"))?;
    let answer = http
        .post(url)
        .bearer_auth(&token.value)
        .header(reqwest::header::CONTENT_LENGTH, "0")
        .send()
        .await
        .map_err(|e| format!("mount request: {e}"))?;
    match answer.status().as_u16() {
        201 => Ok(true),
        202 => {
            if let Some(location) = answer
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                && let Ok(base) = reqwest::Url::parse(registry_url)
                && let Ok(upload) = base.join(location)
                // The token goes only back to the registry itself.
                && upload.origin() == base.origin()
            {
                let _ = http.delete(upload).bearer_auth(&token.value).send().await;
            }
            Ok(false)
        }
        status => Err(format!("registry answered HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#
            ),
            Some(Challenge {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="http://127.0.0.1:1/t,x""#),
            Some(Challenge {
                realm: "http://127.0.0.1:1/t,x".into(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer error, realm = "http://t/token" , service="s""#),
            Some(Challenge {
                realm: "http://t/token".into(),
                service: Some("s".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="kiln""#), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
