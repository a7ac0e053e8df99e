//! Reaching NATS: the server list, credentials and TLS as NATS users configure them, and how
//! long to wait. A command gives up after [`NatsOptions::timeout`] saying which servers it
//! could not reach and why; a worker keeps retrying and logs each try. Credentials never
//! reach a message: URLs are shown without them and the client never sees them in a URL.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::servers::{self, Secret, Servers, UrlCredentials};

/// How kiln logs in to NATS, besides credentials in the URLs.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Anonymous, or whatever the URLs carry.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// A file holding an NKey user seed (`SU…`).
    NKeySeedFile(PathBuf),
    /// A `.creds` file (user JWT and NKey seed).
    CredsFile(PathBuf),
}

/// TLS: a CA to trust, and a client certificate when the server asks for one.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// PEM file of the CA(s) that signed the servers' certificates; TLS is then required.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key files of this client.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// What to do while no server answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Patience {
    /// Give up after [`NatsOptions::timeout`] (commands).
    #[default]
    GiveUp,
    /// Retry for ever, logging each try (workers).
    Forever,
}

/// Where NATS is and how to reach it.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs, comma-separated.
    pub servers: String,
    /// Credentials besides those in the URLs.
    pub credentials: Credentials,
    /// TLS settings.
    pub tls: Tls,
    /// How long a command waits for NATS (connection and JetStream set-up).
    pub timeout: Duration,
    /// Give up after `timeout`, or retry for ever.
    pub patience: Patience,
    /// Replicas of every stream, KV bucket and object store kiln creates [default: the
    /// number of servers in the cluster, at most 3; 1 on a single server].
    pub replicas: Option<usize>,
}

impl NatsOptions {
    /// `servers` (comma-separated URLs), anonymous, 10 s patience, default replicas.
    pub fn new(servers: impl Into<String>) -> NatsOptions {
        NatsOptions {
            servers: servers.into(),
            credentials: Credentials::None,
            tls: Tls::default(),
            timeout: Duration::from_secs(10),
            patience: Patience::GiveUp,
            replicas: None,
        }
    }
}

/// Why kiln could not get a working connection to NATS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The options are wrong (a URL, a credentials file, a replica count).
    #[error("NATS options: {0}")]
    Options(String),
    /// No server answered in time.
    #[error("cannot reach NATS at {servers}: {reason}")]
    Unreachable {
        /// The servers tried, without credentials.
        servers: String,
        /// The last failure.
        reason: String,
    },
    /// A server answered and refused kiln's credentials or TLS.
    #[error("NATS at {servers} refused the connection: {reason}")]
    Refused {
        /// The servers tried, without credentials.
        servers: String,
        /// What the server or the TLS handshake said, and what to check.
        reason: String,
    },
    /// Connected, but the streams and stores could not be set up.
    #[error("NATS at {servers}: {error}")]
    Setup {
        /// The servers, without credentials.
        servers: String,
        /// What failed.
        error: String,
    },
}

/// A connected client and what kiln needs to know about the connection.
pub(super) struct Connected {
    pub client: async_nats::Client,
    pub servers: Servers,
    /// What is left of the patience, for the set-up that follows.
    pub retry: Retry,
}

/// How long a worker waits between tries at most.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Connects to the first server of the list that answers, retrying as `options.patience`
/// says.
pub(super) async fn connect(options: &NatsOptions) -> Result<Connected, ConnectError> {
    install_crypto_provider();
    let servers = servers::parse(&options.servers).map_err(ConnectError::Options)?;
    let client_options = client_options(options, &servers).await?;
    let mut retry = Retry::new(options);
    loop {
        let attempt_timeout = match retry.deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), MAX_BACKOFF),
            None => MAX_BACKOFF,
        };
        let error = match client_options
            .clone()
            .connection_timeout(attempt_timeout)
            .connect(servers.addrs.clone())
            .await
        {
            Ok(client) => {
                return Ok(Connected {
                    client,
                    servers,
                    retry,
                });
            }
            Err(e) => e,
        };
        if let Some(reason) = refusal(&error, options, &servers) {
            return Err(ConnectError::Refused {
                servers: servers.shown,
                reason,
            });
        }
        let reason = error.to_string();
        if !retry
            .wait(&format!("NATS at {}", servers.shown), &reason)
            .await
        {
            return Err(ConnectError::Unreachable {
                servers: servers.shown,
                reason,
            });
        }
    }
}

/// Picks rustls's process-wide crypto provider. The build has two (ring through async-nats,
/// aws-lc-rs through the registry client), and then rustls picks none: any TLS connection to
/// NATS (`--nats-ca`, a `tls://` URL, a server requiring TLS) panicked. A provider installed
/// earlier stays.
fn install_crypto_provider() {
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
}

/// Tries again with backoff until the deadline (none for a worker), saying what it waits for.
pub(super) struct Retry {
    deadline: Option<Instant>,
    timeout: Duration,
    backoff: Duration,
    tries: u32,
}

impl Retry {
    fn new(options: &NatsOptions) -> Retry {
        Retry {
            deadline: match options.patience {
                Patience::GiveUp => Some(Instant::now() + options.timeout),
                Patience::Forever => None,
            },
            timeout: options.timeout,
            backoff: Duration::from_millis(200),
            tries: 0,
        }
    }

    /// After a failed try at `what` (`reason`): waits before the next one, or returns false
    /// when the deadline has passed. Logs the first wait of a command, every wait of a
    /// worker.
    pub(super) async fn wait(&mut self, what: &str, reason: &str) -> bool {
        self.tries += 1;
        let pause = match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                if self.tries == 1 {
                    tracing::warn!(
                        "waiting for {what} (up to {} s): {reason}",
                        self.timeout.as_secs()
                    );
                }
                self.backoff.min(left)
            }
            None => {
                tracing::warn!(
                    "cannot reach {what}: {reason}; retrying in {} ms (try {})",
                    self.backoff.as_millis(),
                    self.tries
                );
                self.backoff
            }
        };
        tokio::time::sleep(pause).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }

    /// Starts counting tries afresh (the deadline stays).
    pub(super) fn reset(&mut self) {
        self.tries = 0;
        self.backoff = Duration::from_millis(200);
    }
}

/// The message for an error no retry will fix (credentials, TLS), or `None`.
fn refusal(
    error: &async_nats::ConnectError,
    options: &NatsOptions,
    servers: &Servers,
) -> Option<String> {
    use async_nats::ConnectErrorKind as Kind;
    match error.kind() {
        Kind::AuthorizationViolation => Some(format!(
            "{error} (check the user and password, token, NKey or credentials file{})",
            match (&options.credentials, &servers.credentials) {
                (Credentials::None, None) => ": none was given",
                _ => "",
            }
        )),
        Kind::Authentication => Some(format!(
            "{error} (the NKey seed or credentials file holds no valid user key)"
        )),
        Kind::Tls => Some(format!(
            "{error} (check the CA file and the server's certificate)"
        )),
        Kind::Io if untrusted_certificate(error) => Some(format!(
            "{error} (check the CA file and the server's certificate)"
        )),
        _ => None,
    }
}

/// Whether the TLS handshake rejected the server's certificate (an unknown issuer, another
/// name, expired): the client reports it as an I/O error, which no retry fixes.
fn untrusted_certificate(error: &async_nats::ConnectError) -> bool {
    use async_nats::rustls;
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(tls, Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The client's options: name, reconnects for ever, credentials, TLS, connection events
/// logged.
async fn client_options(
    options: &NatsOptions,
    servers: &Servers,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    let mut client = async_nats::ConnectOptions::new()
        .name("kiln")
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("lost the NATS connection; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::LameDuckMode => {
                    tracing::warn!("the NATS server is shutting down (lame duck mode)")
                }
                other => tracing::debug!("NATS: {other}"),
            }
        });
    let given = !matches!(options.credentials, Credentials::None);
    if given && servers.credentials.is_some() {
        return Err(ConnectError::Options(
            "credentials are both in the server URL and given separately: give them once".into(),
        ));
    }
    client = match (&servers.credentials, &options.credentials) {
        (Some(UrlCredentials::UserPassword(user, password)), _)
        | (None, Credentials::UserPassword { user, password }) => {
            client.user_and_password(user.clone(), password.expose().to_owned())
        }
        (Some(UrlCredentials::Token(token)), _) | (None, Credentials::Token(token)) => {
            client.token(token.expose().to_owned())
        }
        (None, Credentials::NKeySeedFile(path)) => client.nkey(nkey_seed(path)?),
        (None, Credentials::CredsFile(path)) => {
            client.credentials_file(path).await.map_err(|e| {
                ConnectError::Options(format!("credentials file {}: {e}", path.display()))
            })?
        }
        (None, Credentials::None) => client,
    };
    if let Some(ca) = &options.tls.ca_file {
        readable(ca, "CA file")?;
        client = client.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &options.tls.client_cert {
        readable(cert, "client certificate")?;
        readable(key, "client key")?;
        client = client
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(client)
}

/// The NKey user seed in `path` (checked for its shape only; its text is never shown).
fn nkey_seed(path: &std::path::Path) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConnectError::Options(format!("NKey seed file {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU") && l.len() == 58)
        .map(str::to_owned)
        .ok_or_else(|| {
            ConnectError::Options(format!(
                "NKey seed file {} holds no user seed (a line of 58 characters starting SU)",
                path.display()
            ))
        })
}

/// An error naming `what` when `path` cannot be read (the client would only say "TLS error").
fn readable(path: &std::path::Path, what: &str) -> Result<(), ConnectError> {
    std::fs::metadata(path)
        .map(drop)
        .map_err(|e| ConnectError::Options(format!("NATS TLS {what} {}: {e}", path.display())))
}
