//! Credentials for a registry, looked up in order: `KILN_REGISTRY_USER` /
//! `KILN_REGISTRY_PASSWORD` (or `KILN_REGISTRY_TOKEN`) in the environment, then
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` (`auths`, `credHelpers`,
//! `credsStore`), then anonymous. oci-client answers Basic and Bearer-token challenges with them.

use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::RegistryError;

/// Env var: user name for every registry kiln talks to.
pub const ENV_USER: &str = "KILN_REGISTRY_USER";
/// Env var: password that goes with [`ENV_USER`].
pub const ENV_PASSWORD: &str = "KILN_REGISTRY_PASSWORD";
/// Env var: a bearer token for every registry kiln talks to.
pub const ENV_TOKEN: &str = "KILN_REGISTRY_TOKEN";

/// Credentials found for a registry, and where they came from (for messages; never the secret).
pub struct Credentials {
    /// What oci-client sends.
    pub auth: RegistryAuth,
    /// `environment`, `docker config`, `credential helper` or `anonymous`.
    pub origin: &'static str,
}

impl Credentials {
    /// The secret part (password or token), to keep it out of every message.
    pub fn secret(&self) -> Option<&str> {
        match &self.auth {
            RegistryAuth::Basic(_, password) => Some(password),
            RegistryAuth::Bearer(token) => Some(token),
            RegistryAuth::Anonymous => None,
        }
    }
}

/// Looks up the credentials for `registry` (`host[:port]`).
pub fn credentials_for(registry: &str) -> Result<Credentials, RegistryError> {
    let env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = env(ENV_TOKEN) {
        return Ok(Credentials {
            auth: RegistryAuth::Bearer(token),
            origin: "environment",
        });
    }
    match (env(ENV_USER), env(ENV_PASSWORD)) {
        (Some(user), Some(password)) => {
            return Ok(Credentials {
                auth: RegistryAuth::Basic(user, password),
                origin: "environment",
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(RegistryError::local(
                registry,
                "read credentials",
                format!("set both {ENV_USER} and {ENV_PASSWORD}, or neither"),
            ));
        }
        (None, None) => {}
    }
    let Some(config) = docker_config_path().filter(|p| p.exists()) else {
        return Ok(anonymous());
    };
    let server = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    let fail = |problem: &str| {
        RegistryError::local(
            registry,
            "read credentials",
            format!("{}: {problem}", config.display()),
        )
    };
    match docker_credential::get_credential(server) {
        Ok(DockerCredential::UsernamePassword(user, password)) => Ok(Credentials {
            auth: RegistryAuth::Basic(user, password),
            origin: "docker config",
        }),
        Ok(DockerCredential::IdentityToken(_)) => Err(fail(
            "holds an identity token for this registry; kiln needs a username and password (docker login)",
        )),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(anonymous()),
        Err(CredentialRetrievalError::ConfigReadError) => Err(fail("cannot be read as JSON")),
        Err(CredentialRetrievalError::CredentialDecodingError) => {
            Err(fail("the \"auth\" entry is not base64 of user:password"))
        }
        Err(CredentialRetrievalError::CredentialMismatchError) => Err(fail(
            "\"auth\" and \"username\"/\"password\" disagree for this registry",
        )),
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => Err(fail(&format!(
            "credential helper docker-credential-{helper} failed"
        ))),
        Err(other) => Err(fail(&format!("credential lookup failed: {other:?}"))),
    }
}

fn anonymous() -> Credentials {
    Credentials {
        auth: RegistryAuth::Anonymous,
        origin: "anonymous",
    }
}

fn docker_config_path() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json"))
}
