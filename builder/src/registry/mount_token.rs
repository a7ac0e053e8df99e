//! Bearer tokens for cross-repository mounts. oci-client asks a token server for one
//! repository per token, but a registry with token auth mounts a blob only for a token that
//! also grants `pull` on the source repository: this asks for both scopes in one token.

use std::time::Duration;

/// How long a fetched mount token is reused (token servers grant minutes; stay well inside).
pub(super) const REUSE: Duration = Duration::from_secs(60);

/// The parameters of a `WWW-Authenticate: Bearer realm="..",service=".."` challenge.
#[derive(Debug, PartialEq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

/// Parses a Bearer challenge; `None` for any other scheme.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            _ => {}
        }
        rest = after.trim_start_matches([',', ' ']);
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
) -> Result<String, String> {
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
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| format!("token answer is not JSON: {e}"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "token answer holds no token".to_owned())
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
        assert_eq!(parse_challenge(r#"Basic realm="kiln""#), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
