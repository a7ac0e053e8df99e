//! An OCI registry client on oci-client's streaming pieces (HEAD, mount, streamed upload, raw
//! manifests) and a few requests of its own (a small blob in one POST, a mount with a token
//! for two repositories), with our own errors, credentials lookup and retries with backoff.
//!
//! One [`Registry`] holds one HTTP connection pool, shared by every registry host it talks to.

mod auth;
mod error;
mod mount_token;
mod reference;
mod retry;
mod upload;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kiln_layers::{BlobStore, Descriptor};
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryTokenType;
use oci_client::{Client, Reference};

pub use auth::{Credentials, ENV_PASSWORD, ENV_TOKEN, ENV_USER, credentials_for};
pub use error::{Answer, RegistryError};
pub use reference::{parse_reference, repository_of};
pub use retry::RetryPolicy;
pub use upload::SINGLE_POST_MAX;

/// Media types accepted when pulling a manifest.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    kiln_layers::oci::MEDIA_TYPE_MANIFEST,
    kiln_layers::oci::MEDIA_TYPE_INDEX,
    kiln_layers::oci::MEDIA_TYPE_DOCKER_MANIFEST,
    kiln_layers::oci::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
];

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
}

/// (registry, target repository, source repository) of a cross-repository mount.
type MountPair = (String, String, String);

/// How long a push token kiln fetched for its own requests is used (token servers grant 60 s
/// at least).
const PUSH_TOKEN_REUSE: Duration = Duration::from_secs(30);

/// How a registry (host) takes credentials, as learned at login.
#[derive(Clone)]
enum Scheme {
    /// HTTP Basic with this user and password, or nothing at all (an open registry: empty
    /// user and password, an `Authorization` header it ignores).
    Basic(String, String),
    /// The bearer token given for it.
    Token(String),
    /// Bearer tokens from its token server, for this user and password.
    TokenServer(String, String),
}

/// A registry client: credentials per registry host, retries, one connection pool.
#[derive(Clone)]
pub struct Registry {
    client: Arc<Client>,
    retry: RetryPolicy,
    authed: Arc<Mutex<HashSet<String>>>,
    /// How each registry logged in takes credentials.
    schemes: Arc<Mutex<HashMap<String, Scheme>>>,
    secrets: Arc<Mutex<Vec<String>>>,
    insecure: Vec<String>,
    /// Push tokens for kiln's own uploads by (registry, repository), with when fetched.
    push_tokens: Arc<Mutex<HashMap<(String, String), mount_token::Token>>>,
    /// Mount tokens by (registry, target repository, source repository), with when fetched.
    mount_tokens: Arc<Mutex<HashMap<MountPair, mount_token::Token>>>,
    /// What a token server answered when it refused the credentials, by registry.
    refusals: Arc<Mutex<HashMap<String, String>>>,
    /// A plain HTTP client for token requests, made on first use.
    http: Arc<std::sync::OnceLock<reqwest::Client>>,
    /// A client for kiln's own requests to plain-HTTP registries (no CA certificates loaded).
    plain_http: Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Registry {
        let config = ClientConfig {
            protocol: if options.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(options.insecure.clone())
            },
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        Registry {
            client: Arc::new(Client::new(config)),
            retry: options.retry,
            authed: Arc::default(),
            schemes: Arc::default(),
            secrets: Arc::default(),
            insecure: options.insecure,
            push_tokens: Arc::default(),
            mount_tokens: Arc::default(),
            refusals: Arc::default(),
            http: Arc::default(),
            plain_http: Arc::default(),
        }
    }

    /// Looks up credentials for the reference's registry once and hands them to the client.
    async fn login(&self, image: &Reference) -> Result<(), RegistryError> {
        let registry = image.resolve_registry().to_owned();
        if self.authed.lock().expect("lock").contains(&registry) {
            return Ok(());
        }
        let creds = credentials_for(&registry)?;
        if let Some(secret) = creds.secret() {
            self.secrets.lock().expect("lock").push(secret.to_owned());
        }
        tracing::debug!(registry, origin = creds.origin, "registry credentials");
        self.client
            .store_auth_if_needed(&registry, &creds.auth)
            .await;
        if let Some(scheme) = self.scheme_of(image, &creds.auth).await {
            self.schemes
                .lock()
                .expect("lock")
                .insert(registry.clone(), scheme);
        }
        self.authed.lock().expect("lock").insert(registry);
        Ok(())
    }

    /// Asks the registry how it wants `auth` (a token fetched now for pushes, or Basic noted);
    /// `None` when it refused or could not say (failures then show on the requests).
    async fn scheme_of(&self, image: &Reference, auth: &RegistryAuth) -> Option<Scheme> {
        if let RegistryAuth::Anonymous = auth {
            // No challenge at all: an open registry. oci-client would probe `GET /v2/` again
            // before every request (it caches no answer for "no auth"), doubling the requests.
            let answer = self.client.auth(image, auth, RegistryOperation::Pull).await;
            return matches!(answer, Ok(None)).then(|| Scheme::Basic(String::new(), String::new()));
        }
        let answer = self.client.auth(image, auth, RegistryOperation::Push).await;
        match (answer, auth) {
            (Ok(Some(_)), RegistryAuth::Basic(user, password)) => {
                Some(Scheme::TokenServer(user.clone(), password.clone()))
            }
            (Ok(Some(_)), RegistryAuth::Bearer(token)) => Some(Scheme::Token(token.clone())),
            (Ok(None), RegistryAuth::Basic(user, password)) => {
                Some(Scheme::Basic(user.clone(), password.clone()))
            }
            // oci-client then goes on without a token; its 401 gets this answer added.
            (Err(OciDistributionError::AuthenticationFailure(body)), _) => {
                self.refusals
                    .lock()
                    .expect("lock")
                    .insert(image.resolve_registry().to_owned(), error::trimmed(&body));
                None
            }
            _ => None,
        }
    }

    /// How the reference's registry takes credentials, once logged in.
    fn scheme(&self, image: &Reference) -> Option<Scheme> {
        self.schemes
            .lock()
            .expect("lock")
            .get(image.resolve_registry())
            .cloned()
    }

    /// For a registry taking Basic or nothing, spares `image` oci-client's auth probe (which
    /// it makes once per repository and operation): the Basic credentials, empty for an open
    /// registry, which ignores them.
    async fn skip_probe(&self, image: &Reference) {
        let Some(Scheme::Basic(user, password)) = self.scheme(image) else {
            return;
        };
        for op in [RegistryOperation::Pull, RegistryOperation::Push] {
            let token = RegistryTokenType::Basic(user.clone(), password.clone());
            self.client.tokens.insert(image, op, token).await;
        }
    }

    /// Wraps an oci-client failure with the reference and action, secrets removed.
    fn fail(&self, image: &Reference, action: &str, err: OciDistributionError) -> RegistryError {
        let mut answer = Answer::from(err);
        if answer.status == Some(401)
            && let Some(refusal) = self
                .refusals
                .lock()
                .expect("lock")
                .get(image.resolve_registry())
        {
            answer.text = format!(
                "{}; the token server refused the credentials: {refusal}",
                answer.text
            );
        }
        for secret in self.secrets.lock().expect("lock").iter() {
            if !secret.is_empty() {
                answer.text = answer.text.replace(secret.as_str(), "***");
            }
        }
        RegistryError {
            reference: image.whole(),
            action: action.to_owned(),
            answer,
        }
    }

    /// Runs one registry call with login and retries.
    async fn call<T, F, Fut>(
        &self,
        image: &Reference,
        action: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.login(image).await?;
        self.skip_probe(image).await;
        self.retry
            .run(|| {
                let fut = op(self.client.clone());
                async move { fut.await.map_err(|e| self.fail(image, action, e)) }
            })
            .await
    }

    /// Pulls a manifest or index: its exact bytes and its digest.
    pub async fn manifest(&self, image: &Reference) -> Result<(Vec<u8>, String), RegistryError> {
        self.call(image, "pull manifest", |c| {
            let image = image.clone();
            async move {
                let (bytes, digest) = c
                    .pull_manifest_raw(&image, &RegistryAuth::Anonymous, ACCEPTED_MANIFESTS)
                    .await?;
                Ok((bytes.to_vec(), digest))
            }
        })
        .await
    }

    /// True when the blob is already in the reference's repository (HEAD).
    pub async fn blob_exists(
        &self,
        image: &Reference,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        self.call(image, &format!("check blob {digest}"), |c| {
            let image = image.clone();
            let digest = digest.to_owned();
            async move { c.blob_exists(&image, &digest).await }
        })
        .await
    }

    /// Asks the registry to mount the blob from repository `from` (same registry). Best
    /// effort: false when the registry would not mount it.
    pub async fn mount(&self, image: &Reference, from: &Reference, digest: &str) -> bool {
        if self.login(image).await.is_err() {
            return false;
        }
        if let Some(Scheme::TokenServer(user, password)) = self.scheme(image) {
            return self
                .mount_with_token(image, from, digest, (user, password))
                .await;
        }
        let result = self
            .call(image, &format!("mount blob {digest}"), |c| {
                let (image, from, digest) = (image.clone(), from.clone(), digest.to_owned());
                async move { c.mount_blob(&image, &from, &digest).await }
            })
            .await;
        if let Err(err) = &result {
            tracing::debug!("mount from {} not done: {err}", from.repository());
        }
        result.is_ok()
    }

    /// A mount on a registry with token auth: oci-client's tokens name one repository, so
    /// this fetches one granting push on the target and pull on the source (reused for a pair
    /// while it is young) and sends the mount request itself.
    async fn mount_with_token(
        &self,
        image: &Reference,
        from: &Reference,
        digest: &str,
        (user, password): (String, String),
    ) -> bool {
        let registry = image.resolve_registry().to_owned();
        let registry_url = self.url_of(&registry);
        let key = (
            registry,
            image.repository().to_owned(),
            from.repository().to_owned(),
        );
        let http = self.http.get_or_init(mount_token::http_client);
        let cached = self
            .mount_tokens
            .lock()
            .expect("lock")
            .get(&key)
            .filter(|t| t.fresh())
            .cloned();
        let token = match cached {
            Some(token) => token,
            None => {
                match mount_token::fetch(http, &registry_url, (&user, &password), &key.1, &key.2)
                    .await
                {
                    Ok(token) => {
                        let mut tokens = self.mount_tokens.lock().expect("lock");
                        tokens.insert(key.clone(), token.clone());
                        token
                    }
                    Err(problem) => {
                        tracing::debug!("no mount token for {}: {problem}", image.whole());
                        return false;
                    }
                }
            }
        };
        match mount_token::mount(http, &registry_url, &token, &key.1, &key.2, digest).await {
            Ok(mounted) => mounted,
            Err(problem) => {
                // A token the registry refused is not used again.
                self.mount_tokens.lock().expect("lock").remove(&key);
                tracing::debug!("mount from {} not done: {problem}", key.2);
                false
            }
        }
    }

    /// `scheme://host[:port]` of `registry`: plain HTTP for the insecure ones.
    fn url_of(&self, registry: &str) -> String {
        let scheme = if self.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}")
    }

    /// Uploads the blob at `path` (digest and size known). One of at most
    /// [`SINGLE_POST_MAX`] bytes goes in a single POST where the registry takes it so (else
    /// POST then PUT); a larger one, or one the single POST could not store, streams in a
    /// POST and a PUT.
    pub async fn upload(
        &self,
        image: &Reference,
        path: &Path,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        if size <= SINGLE_POST_MAX {
            self.login(image).await?;
            if let Some(auth) = self.own_auth(image).await {
                match self.upload_small(image, path, digest, &auth).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_retryable() => return Err(e),
                    // A registry that refuses the single POST may still take POST + PUT.
                    Err(e) => tracing::debug!("{e}; uploading it again in POST + PUT"),
                }
            }
        }
        self.upload_streamed(image, path, digest, size).await
    }

    /// A small blob in one request (see [`upload::single_post`]), with retries.
    async fn upload_small(
        &self,
        image: &Reference,
        path: &Path,
        digest: &str,
        auth: &upload::Auth,
    ) -> Result<(), RegistryError> {
        let action = format!("upload blob {digest}");
        let body = tokio::fs::read(path)
            .await
            .map_err(|e| self.fail(image, &action, e.into()))?;
        let registry = image.resolve_registry();
        let registry_url = self.url_of(registry);
        let http = if registry_url.starts_with("http:") {
            self.plain_http.get_or_init(upload::plain_http_client)
        } else {
            self.http.get_or_init(mount_token::http_client)
        };
        self.retry
            .run(|| async {
                upload::single_post(http, &registry_url, auth, image.repository(), digest, &body)
                    .await
                    .map(|one| tracing::debug!(digest, one_request = one, "blob uploaded"))
                    .map_err(|e| self.fail(image, &action, e))
            })
            .await
    }

    /// How kiln's own requests to the reference's repository authenticate, after
    /// [`Registry::login`]; `None` when kiln cannot tell (anonymous on a registry that
    /// challenges), so oci-client does the request.
    async fn own_auth(&self, image: &Reference) -> Option<upload::Auth> {
        match self.scheme(image)? {
            Scheme::Basic(user, password) if user.is_empty() && password.is_empty() => {
                Some(upload::Auth::Anonymous)
            }
            Scheme::Basic(user, password) => Some(upload::Auth::Basic(user, password)),
            Scheme::Token(token) => Some(upload::Auth::Bearer(token)),
            Scheme::TokenServer(user, password) => self.push_token(image, user, password).await,
        }
    }

    /// A token granting push on the reference's repository from the registry's token
    /// server (kept by oci-client for its own requests too), reused for a while.
    async fn push_token(
        &self,
        image: &Reference,
        user: String,
        password: String,
    ) -> Option<upload::Auth> {
        let key = (
            image.resolve_registry().to_owned(),
            image.repository().to_owned(),
        );
        let cached = self
            .push_tokens
            .lock()
            .expect("lock")
            .get(&key)
            .filter(|t| t.fresh())
            .map(|t| t.value().to_owned());
        let token = match cached {
            Some(token) => token,
            None => {
                let basic = RegistryAuth::Basic(user, password);
                let token = self
                    .client
                    .auth(image, &basic, RegistryOperation::Push)
                    .await
                    .ok()??;
                let kept = mount_token::Token::new(token.clone(), PUSH_TOKEN_REUSE);
                self.push_tokens.lock().expect("lock").insert(key, kept);
                token
            }
        };
        Some(upload::Auth::Bearer(token))
    }

    /// Uploads the blob at `path` streamed, in a POST and a PUT (oci-client's monolithic push).
    async fn upload_streamed(
        &self,
        image: &Reference,
        path: &Path,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        self.call(image, &format!("upload blob {digest}"), |c| {
            let (image, path, digest) = (image.clone(), path.to_owned(), digest.to_owned());
            async move {
                let file = tokio::fs::File::open(&path).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                    .map_err(OciDistributionError::from);
                c.push_blob_stream(&image, stream, &digest, Some(size))
                    .await
                    .map(drop)
            }
        })
        .await
    }

    /// Streams the blob `descriptor` from the reference's repository into `store`, checking
    /// its digest before it is renamed into place.
    pub async fn download(
        &self,
        image: &Reference,
        descriptor: &Descriptor,
        store: &BlobStore,
    ) -> Result<(), RegistryError> {
        let action = format!("pull blob {}", descriptor.digest);
        self.call(image, &action, |c| {
            let image = image.clone();
            let store = store.clone();
            let expected = descriptor.digest.clone();
            async move {
                let mut out = store
                    .blob_writer()
                    .map_err(|e| OciDistributionError::IoError(std::io::Error::other(e)))?;
                let mut stream = c.pull_blob_stream(&image, expected.as_str()).await?;
                while let Some(chunk) = stream.next().await {
                    std::io::Write::write_all(&mut out, &chunk?)?;
                }
                let (digest, _) = out
                    .commit()
                    .map_err(|e| OciDistributionError::IoError(std::io::Error::other(e)))?;
                if digest != expected {
                    return Err(OciDistributionError::SpecViolationError(format!(
                        "blob {expected} arrived with digest {digest}"
                    )));
                }
                Ok(())
            }
        })
        .await
    }

    /// Pushes a manifest (exact bytes) under the reference's tag or digest; returns its URL.
    pub async fn put_manifest(
        &self,
        image: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::local(
                image.whole(),
                "push manifest",
                format!("bad media type {media_type:?}"),
            )
        })?;
        self.call(image, "push manifest", |c| {
            let (image, body, content_type) = (image.clone(), bytes.to_vec(), content_type.clone());
            async move { c.push_manifest_raw(&image, body, content_type).await }
        })
        .await
    }
}
