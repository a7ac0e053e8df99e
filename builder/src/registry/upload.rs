//! A small blob in one request: `POST /v2/<name>/blobs/uploads/?digest=<digest>` with the
//! blob as the body (the distribution spec's "single POST"). A registry that does not take a
//! blob that way opens an upload instead (202 with a `Location`), and the same bytes then go
//! there by PUT: two requests, as oci-client's monolithic upload makes. oci-client sends no
//! such POST, so kiln sends it itself, with the same credentials.

use std::time::Duration;

use oci_client::errors::OciDistributionError;
use reqwest::header::{CONTENT_TYPE, LOCATION};

/// Blobs up to this size go up in a single POST. A registry that opens an upload instead
/// drops the body it did not read: distribution reads and drops up to 256 KiB of such a body
/// and keeps the connection, and closes it on a larger one.
pub const SINGLE_POST_MAX: u64 = 256 * 1024;

/// How kiln's own requests to a registry authenticate.
#[derive(Clone)]
pub(super) enum Auth {
    /// Nothing: the registry wants no credentials.
    Anonymous,
    /// HTTP Basic with a user name and password (htpasswd).
    Basic(String, String),
    /// A bearer token (given, or from the registry's token server).
    Bearer(String),
}

impl Auth {
    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Anonymous => request,
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// The client for kiln's own requests to a plain-HTTP registry: it loads no CA certificates
/// (that alone costs milliseconds) and so speaks no HTTPS.
pub(super) fn plain_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .tls_certs_only(std::iter::empty::<reqwest::Certificate>())
        .build()
        .unwrap_or_default()
}

/// Sends `body` (the blob `digest`) to `repository` at `registry_url` (`scheme://host[:port]`)
/// in one POST. When the registry opens an upload instead (202), the body goes by PUT to it.
/// Returns true when the one POST stored the blob.
pub(super) async fn single_post(
    http: &reqwest::Client,
    registry_url: &str,
    auth: &Auth,
    repository: &str,
    digest: &str,
    body: &[u8],
) -> Result<bool, OciDistributionError> {
    let url = reqwest::Url::parse_with_params(
        &format!("{registry_url}/v2/{repository}/blobs/uploads/"),
        &[("digest", digest)],
    )
    .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
    let answer = auth
        .apply(http.post(url.clone()))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(body.to_vec())
        .send()
        .await?;
    match answer.status().as_u16() {
        201 => Ok(true),
        202 => {
            let location = answer.headers().get(LOCATION).and_then(|l| l.to_str().ok());
            let location = finishing_url(registry_url, location, digest)?;
            // Credentials go only back to the registry itself.
            let same_origin = reqwest::Url::parse(registry_url)
                .is_ok_and(|base| base.origin() == location.origin());
            let put = http
                .put(location.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body.to_vec());
            let put = if same_origin { auth.apply(put) } else { put };
            let answer = put.send().await?;
            match answer.status().as_u16() {
                201 => Ok(false),
                _ => Err(refusal(location, answer).await),
            }
        }
        _ => Err(refusal(url, answer).await),
    }
}

/// The URL that finishes the upload a 202 answer opened at `location` (relative to
/// `registry_url`, or absolute): the location with `digest=` added.
fn finishing_url(
    registry_url: &str,
    location: Option<&str>,
    digest: &str,
) -> Result<reqwest::Url, OciDistributionError> {
    let location = location.ok_or_else(|| {
        OciDistributionError::SpecViolationError(
            "an upload was opened (202) without a Location".into(),
        )
    })?;
    let mut url = reqwest::Url::parse(registry_url)
        .and_then(|base| base.join(location))
        .map_err(|e| OciDistributionError::UrlParseError(format!("{location:?}: {e}")))?;
    url.query_pairs_mut().append_pair("digest", digest);
    Ok(url)
}

/// A registry's refusal as oci-client reports one, so that it reads and classifies the same
/// (status, OCI error codes, retryable or not).
async fn refusal(url: reqwest::Url, answer: reqwest::Response) -> OciDistributionError {
    let code = answer.status().as_u16();
    OciDistributionError::ServerError {
        code,
        url: url.to_string(),
        message: answer.text().await.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_a_registry_opened_is_finished_with_the_digest() {
        let digest = "sha256:ab";
        let url = finishing_url(
            "http://r:5000",
            Some("/v2/a/b/blobs/uploads/u1?_state=x%3D"),
            digest,
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://r:5000/v2/a/b/blobs/uploads/u1?_state=x%3D&digest=sha256%3Aab"
        );
        let elsewhere = finishing_url("https://r", Some("https://store.example/up/1"), digest);
        assert_eq!(
            elsewhere.unwrap().as_str(),
            "https://store.example/up/1?digest=sha256%3Aab"
        );
        assert!(matches!(
            finishing_url("http://r:5000", None, digest),
            Err(OciDistributionError::SpecViolationError(_))
        ));
    }
}
