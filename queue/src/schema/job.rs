//! Job messages (build and rebase) and the validation of every field a job carries.

use serde::{Deserialize, Serialize};

use super::SCHEMA_VERSION;

/// A build job: published on `kiln.jobs.build.<app>` with the job id as message id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildJob {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id; a job id yields at most one revision.
    pub job_id: String,
    /// App name (DNS-1123 label; it becomes the Knative Service name).
    pub app: String,
    /// Name of the source tarball in the `kiln-sources` object store (`sha256-<hex>`).
    pub source: String,
    /// Runtime (`faas`, `sma`, `app`); detected from the source when absent.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Base image reference; the worker's default when absent.
    #[serde(default)]
    pub base: Option<String>,
    /// Extra `KEY=value` environment for the image.
    #[serde(default)]
    pub env: Vec<String>,
    /// Resources, concurrency and scaling for the rendered Knative Service.
    #[serde(default)]
    pub deploy: DeploySettings,
}

/// How a revision runs on Knative: concurrency, scale bounds, resources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySettings {
    /// `containerConcurrency` (0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<u32>,
    /// `autoscaling.knative.dev/min-scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<u32>,
    /// `autoscaling.knative.dev/max-scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<u32>,
    /// `autoscaling.knative.dev/target` (concurrent requests per replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
    /// CPU request and limit, a Kubernetes quantity (`250m`, `1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit, a Kubernetes quantity (`256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl DeploySettings {
    /// Checks the quantities and bounds.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        for (field, value) in [("deploy.cpu", &self.cpu), ("deploy.memory", &self.memory)] {
            if let Some(v) = value
                && !is_quantity(v)
            {
                return Err(invalid(
                    field,
                    format!("{v:?} is not a Kubernetes quantity (e.g. 250m, 1, 256Mi)"),
                ));
            }
        }
        if let (Some(min), Some(max)) = (self.min_scale, self.max_scale)
            && min > max
        {
            return Err(invalid(
                "deploy.min_scale",
                format!("{min} is above max_scale {max}"),
            ));
        }
        Ok(())
    }
}

/// `<digits>[.<digits>][suffix]` with a Kubernetes suffix.
fn is_quantity(v: &str) -> bool {
    let number_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(number_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// Why a job is not acceptable, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid job: {field}: {problem}")]
pub struct InvalidJob {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidJob {
    InvalidJob {
        field,
        problem: problem.into(),
    }
}

impl BuildJob {
    /// Parses and validates a job message.
    pub fn parse(payload: &[u8]) -> Result<BuildJob, InvalidJob> {
        let job: BuildJob = serde_json::from_slice(payload)
            .map_err(|e| invalid("payload", format!("not a build job: {e}")))?;
        job.validate()?;
        Ok(job)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        validate_header(self.schema_version, &self.job_id, &self.app)?;
        let hex = self.source.strip_prefix("sha256-").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid(
                "source",
                format!(
                    "{:?} is not a source object name (sha256-<64 hex>)",
                    self.source
                ),
            ));
        }
        if let Some(runtime) = &self.runtime
            && !kiln_builder::RUNTIME_NAMES.contains(&runtime.as_str())
        {
            return Err(invalid(
                "runtime",
                format!(
                    "unknown runtime {runtime:?} (known: {})",
                    kiln_builder::RUNTIME_NAMES.join(", ")
                ),
            ));
        }
        if let Some(base) = &self.base {
            kiln_builder::registry::parse_reference(base)
                .map_err(|e| invalid("base", e.to_string()))?;
        }
        self.deploy.validate()?;
        kiln_builder::image_config::parse_env(&self.env)
            .map_err(|e| invalid("env", e.to_string()))?;
        Ok(())
    }
}

/// A rebase job: published on `kiln.jobs.rebase.<app>`; moves a revision's image onto a new
/// runtime base (manifest and config rewritten, app layers untouched) as a new revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebaseJob {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id.
    pub job_id: String,
    /// App name.
    pub app: String,
    /// The revision to rebase (`<app>-<NNNNN>`); the app's latest when absent.
    #[serde(default)]
    pub revision: Option<String>,
    /// The new base or runtime base image reference.
    pub base: String,
}

impl RebaseJob {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        validate_header(self.schema_version, &self.job_id, &self.app)?;
        if let Some(r) = &self.revision
            && !r.starts_with(&format!("{}-", self.app))
        {
            return Err(invalid(
                "revision",
                format!("{r:?} is not a revision of {}", self.app),
            ));
        }
        kiln_builder::registry::parse_reference(&self.base)
            .map_err(|e| invalid("base", e.to_string()))?;
        Ok(())
    }
}

/// Any job on the queue.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Build an app's source.
    Build(BuildJob),
    /// Rebase a revision.
    Rebase(RebaseJob),
}

impl Job {
    /// Parses and validates the job published on `subject`.
    pub fn parse(subject: &str, payload: &[u8]) -> Result<Job, InvalidJob> {
        if subject.starts_with("kiln.jobs.rebase.") {
            let job: RebaseJob = serde_json::from_slice(payload)
                .map_err(|e| invalid("payload", format!("not a rebase job: {e}")))?;
            job.validate()?;
            Ok(Job::Rebase(job))
        } else {
            Ok(Job::Build(BuildJob::parse(payload)?))
        }
    }

    /// The job id.
    pub fn job_id(&self) -> &str {
        match self {
            Job::Build(j) => &j.job_id,
            Job::Rebase(j) => &j.job_id,
        }
    }

    /// The app.
    pub fn app(&self) -> &str {
        match self {
            Job::Build(j) => &j.app,
            Job::Rebase(j) => &j.app,
        }
    }
}

/// The fields every job has: schema version, job id, app.
fn validate_header(schema_version: u32, job_id: &str, app: &str) -> Result<(), InvalidJob> {
    if schema_version != SCHEMA_VERSION {
        return Err(invalid(
            "schema_version",
            format!("{schema_version} is not supported (expected {SCHEMA_VERSION})"),
        ));
    }
    validate_job_id(job_id)?;
    validate_app(app)
}

/// Job ids: 1–64 of `A-Za-z0-9_-` (they are NATS subject tokens and KV keys).
pub fn validate_job_id(id: &str) -> Result<(), InvalidJob> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "job_id",
            format!("{id:?} must be 1-64 characters of A-Z a-z 0-9 _ -"),
        ));
    }
    Ok(())
}

/// App names: a DNS-1123 label a Knative Service can carry with a `-NNNNN` revision suffix:
/// lowercase letters, digits and `-`, starting with a letter, at most 57 characters.
pub fn validate_app(app: &str) -> Result<(), InvalidJob> {
    let ok = !app.is_empty()
        && app.len() <= 57
        && app.starts_with(|c: char| c.is_ascii_lowercase())
        && !app.ends_with('-')
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(invalid(
            "app",
            format!(
                "{app:?} must be a DNS-1123 label: lowercase letters, digits and -, starting with a letter, at most 57 characters"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BuildJob {
        BuildJob {
            schema_version: 1,
            job_id: "j-1".into(),
            app: "hello".into(),
            source: format!("sha256-{}", "a".repeat(64)),
            runtime: Some("faas".into()),
            base: Some("127.0.0.1:5000/base/node:20".into()),
            env: vec!["A=1".into()],
            deploy: DeploySettings::default(),
        }
    }

    #[test]
    fn a_good_job_round_trips() {
        let bytes = serde_json::to_vec(&job()).unwrap();
        assert_eq!(BuildJob::parse(&bytes).unwrap(), job());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = Box<dyn Fn(&mut BuildJob)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("schema_version", Box::new(|j| j.schema_version = 9)),
            ("job_id", Box::new(|j| j.job_id = "a.b".into())),
            ("app", Box::new(|j| j.app = "Hello".into())),
            ("app", Box::new(|j| j.app = "x".repeat(58))),
            ("source", Box::new(|j| j.source = "../etc/passwd".into())),
            ("runtime", Box::new(|j| j.runtime = Some("cobol".into()))),
            ("base", Box::new(|j| j.base = Some("Bad Ref".into()))),
            ("env", Box::new(|j| j.env = vec!["1X=2".into()])),
            (
                "deploy.cpu",
                Box::new(|j| j.deploy.cpu = Some("lots".into())),
            ),
            (
                "deploy.memory",
                Box::new(|j| j.deploy.memory = Some("1 Gi".into())),
            ),
        ];
        for (field, spoil) in cases {
            let mut j = job();
            spoil(&mut j);
            let err = BuildJob::parse(&serde_json::to_vec(&j).unwrap()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let err = BuildJob::parse(b"{not json").unwrap_err();
        assert_eq!(err.field, "payload");
        let err = BuildJob::parse(
            br#"{"schema_version":1,"job_id":"x","app":"a","source":"s","extra":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
