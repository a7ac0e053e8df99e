//! Registry errors: the reference, what kiln was doing, and what the registry answered.

use std::error::Error as _;
use std::fmt;

use oci_client::errors::OciDistributionError;

/// A registry operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {action}: {answer}")]
pub struct RegistryError {
    /// The image reference (or registry) involved.
    pub reference: String,
    /// What kiln was doing (`pull manifest`, `upload blob sha256:…`, …).
    pub action: String,
    /// What went wrong: the registry's answer with its status and error code, or the
    /// connection failure.
    pub answer: Answer,
}

impl RegistryError {
    /// True when trying again may succeed (5xx, 429, connection reset or refused, timeout).
    pub fn is_retryable(&self) -> bool {
        self.answer.retryable
    }

    /// Whether the registry answered with the OCI error code `code` (`MANIFEST_BLOB_UNKNOWN`).
    pub fn has_code(&self, code: &str) -> bool {
        self.answer.codes.iter().any(|c| c == code)
    }

    /// The HTTP status the registry answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        self.answer.status
    }

    /// An error that did not come from a request (bad reference, bad document, …).
    pub fn local(
        reference: impl Into<String>,
        action: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        RegistryError {
            reference: reference.into(),
            action: action.into(),
            answer: Answer {
                text: text.into(),
                status: None,
                retryable: false,
                codes: Vec::new(),
            },
        }
    }
}

/// What the registry answered, as text safe to log (credentials are never part of it).
#[derive(Clone, Debug)]
pub struct Answer {
    /// Human-readable description with status and error code.
    pub text: String,
    /// HTTP status, when known.
    pub status: Option<u16>,
    /// Whether a retry may help.
    pub retryable: bool,
    /// The error codes of the registry's OCI error body (`BLOB_UNKNOWN`, `DENIED`, …).
    pub codes: Vec<String>,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn retryable_status(code: u16) -> bool {
    code == 429 || code >= 500
}

/// `body` on one line, at most 300 characters.
pub(super) fn trimmed(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    let mut cut: String = body.chars().take(300).collect();
    if cut.len() < body.len() {
        cut.push('…');
    }
    cut.replace('\n', " ")
}

/// The codes, messages and details of an OCI error body (`{"errors":[…]}`), if it is one,
/// and the codes alone.
fn oci_errors(body: &str) -> Option<(String, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    let envelope: Envelope = serde_json::from_str(body.trim()).ok()?;
    let entries: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| {
            let detail = match &e.detail {
                Some(serde_json::Value::String(d)) if !d.is_empty() => {
                    format!(" ({})", trimmed(d))
                }
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => format!(" ({})", trimmed(&other.to_string())),
            };
            format!("{}: {}{detail}", trimmed(&e.code), trimmed(&e.message))
        })
        .collect();
    let codes = envelope.errors.iter().map(|e| e.code.clone()).collect();
    (!entries.is_empty()).then(|| (entries.join("; "), codes))
}

fn status_text(code: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP {code} {reason}").trim_end().to_owned()
}

impl From<OciDistributionError> for Answer {
    fn from(err: OciDistributionError) -> Answer {
        use OciDistributionError as E;
        let mut codes = Vec::new();
        let (text, status, retryable) = match err {
            E::RegistryError { envelope, .. } => {
                let entries: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        let code = serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_else(|| format!("{:?}", e.code));
                        let entry = format!("{code}: {}", e.message);
                        codes.push(code);
                        entry
                    })
                    .collect();
                // oci-client keeps the body of a 4xx and drops its status; of the 4xx codes
                // only "too many requests" is worth another try.
                let throttled = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Toomanyrequests));
                (
                    format!("registry answered {}", entries.join("; ")),
                    throttled.then_some(429),
                    throttled,
                )
            }
            E::ServerError { code, message, .. } => {
                let body = match oci_errors(&message) {
                    Some((text, found)) => {
                        codes = found;
                        text
                    }
                    None => trimmed(&message),
                };
                (
                    format!("registry answered {}: {body}", status_text(code)),
                    Some(code),
                    retryable_status(code),
                )
            }
            E::UnauthorizedError { .. } => (
                "registry answered HTTP 401 Unauthorized (check the credentials for this registry)"
                    .into(),
                Some(401),
                false,
            ),
            E::AuthenticationFailure(body) => (
                format!("authentication failed: {}", trimmed(&body)),
                Some(401),
                false,
            ),
            E::RequestError(e) => return request_answer(&e),
            E::IoError(e) => {
                if let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) {
                    return request_answer(re);
                }
                (format!("I/O error: {e}"), None, false)
            }
            E::SpecViolationError(s) => (
                format!("registry answered outside the distribution spec: {s}"),
                None,
                false,
            ),
            E::DigestError(e) => (format!("content does not match: {e}"), None, false),
            other => (
                format!("registry answered something kiln cannot use: {other}"),
                None,
                false,
            ),
        };
        Answer {
            text,
            status,
            retryable,
            codes,
        }
    }
}

/// Classifies a transport-level error.
fn request_answer(e: &reqwest::Error) -> Answer {
    if let Some(status) = e.status() {
        let code = status.as_u16();
        let auth_hint = if code == 401 || code == 403 {
            " (check the credentials for this registry)"
        } else {
            ""
        };
        return Answer {
            text: format!("registry answered {}{auth_hint}", status_text(code)),
            status: Some(code),
            retryable: retryable_status(code),
            codes: Vec::new(),
        };
    }
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let cause = causes.last().cloned().unwrap_or_else(|| e.to_string());
    let unknown_host = causes.iter().any(|c| c.contains("dns error"));
    // A TLS failure repeats on every try: a plain-HTTP registry, or a certificate not trusted.
    if e.is_connect() && causes.iter().any(|c| c.contains("corrupt message")) {
        return Answer {
            text: format!(
                "TLS handshake failed ({cause}): if this registry speaks plain HTTP, name it in --insecure-registry"
            ),
            status: None,
            retryable: false,
            codes: Vec::new(),
        };
    }
    if e.is_connect()
        && causes
            .iter()
            .any(|c| c.contains("invalid peer certificate"))
    {
        return Answer {
            text: format!("TLS certificate not accepted: {cause}"),
            status: None,
            retryable: false,
            codes: Vec::new(),
        };
    }
    let what = if unknown_host {
        "unknown host"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "connection failed"
    };
    Answer {
        text: format!("{what}: {cause}"),
        status: None,
        retryable: !unknown_host,
        codes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_retryable_client_errors_are_not() {
        let five = Answer::from(OciDistributionError::ServerError {
            code: 503,
            url: "http://r/v2/".into(),
            message: "busy".into(),
        });
        assert!(five.retryable);
        assert_eq!(
            five.text,
            "registry answered HTTP 503 Service Unavailable: busy"
        );
        let four = Answer::from(OciDistributionError::ServerError {
            code: 404,
            url: "http://r/v2/".into(),
            message: String::new(),
        });
        assert!(!four.retryable);
        assert_eq!(four.status, Some(404));
        let many = Answer::from(OciDistributionError::ServerError {
            code: 429,
            url: "http://r/v2/".into(),
            message: "slow down".into(),
        });
        assert!(many.retryable);
    }

    #[test]
    fn the_registry_error_codes_are_kept_apart_from_the_text() {
        let answer = Answer::from(OciDistributionError::ServerError {
            code: 400,
            url: "http://r/v2/x/manifests/t".into(),
            message: r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#.into(),
        });
        assert_eq!(answer.codes, ["MANIFEST_BLOB_UNKNOWN"]);
        let error = RegistryError {
            reference: "r/x:t".into(),
            action: "push manifest".into(),
            answer,
        };
        assert!(error.has_code("MANIFEST_BLOB_UNKNOWN"));
        assert!(!error.has_code("BLOB_UNKNOWN"));
    }

    #[test]
    fn registry_envelope_names_the_error_code() {
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        let answer = Answer::from(OciDistributionError::RegistryError {
            envelope,
            url: "http://r/v2/x/manifests/nope".into(),
        });
        assert_eq!(
            answer.text,
            "registry answered MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(!answer.retryable);
    }

    #[test]
    fn a_throttled_answer_with_an_error_body_is_retried() {
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit"}]}"#,
        )
        .unwrap();
        let answer = Answer::from(OciDistributionError::RegistryError {
            envelope,
            url: "http://r/v2/x/manifests/v1".into(),
        });
        assert!(answer.retryable);
        assert_eq!(answer.status, Some(429));
    }

    #[test]
    fn an_error_body_with_a_status_names_code_message_and_detail() {
        let answer = Answer::from(OciDistributionError::ServerError {
            code: 400,
            url: "http://r/v2/x/manifests/v1".into(),
            message: r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#.into(),
        });
        assert_eq!(
            answer.text,
            "registry answered HTTP 400 Bad Request: MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:ab)"
        );
        assert!(!answer.retryable);
    }
}
