//! How queue records read in the CLI: a job's events as progress lines (`Display` of
//! [`EventKind`]) and an app's revisions with their traffic as a table or JSON.

use std::fmt;

use crate::schema::{EventKind, Revision};
use crate::traffic::Traffic;

/// The line `kiln submit --wait` prints for the event.
impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::Accepted => f.write_str("accepted"),
            EventKind::Building { worker, attempt } => {
                write!(f, "building on {worker} (attempt {attempt})")
            }
            EventKind::Step { text } => f.write_str(text),
            EventKind::Pushed { image } => write!(f, "pushed {image}"),
            EventKind::Revision { revision } => write!(f, "revision {}", revision.name),
            EventKind::Failed { reason, retryable } => write!(
                f,
                "failed{}: {reason}",
                if *retryable { " (will retry)" } else { "" }
            ),
        }
    }
}

/// `kiln revisions --json`: `{"revisions": […], "traffic": {…}}`.
pub fn revisions_json(revisions: &[Revision], traffic: &Traffic) -> serde_json::Value {
    serde_json::json!({"revisions": revisions, "traffic": traffic})
}

/// `kiln revisions`: one line per revision (name, short image and base digests, runtime,
/// creation time, traffic share) under a header; every line ends with a newline.
pub fn revisions_table(revisions: &[Revision], traffic: &Traffic) -> String {
    let mut table = format!(
        "{:<20} {:<19} {:<8} {:<19} {:<20} TRAFFIC\n",
        "REVISION", "IMAGE DIGEST", "RUNTIME", "BASE", "CREATED"
    );
    let short = |d: &str| d.get(..19).unwrap_or(d).to_owned();
    for r in revisions {
        let share = traffic
            .targets
            .iter()
            .find(|t| t.revision == r.name)
            .map(|t| match &t.tag {
                Some(tag) => format!("{}% ({tag})", t.percent),
                None => format!("{}%", t.percent),
            })
            .unwrap_or_default();
        table.push_str(&format!(
            "{:<20} {:<19} {:<8} {:<19} {:<20} {share}\n",
            r.name,
            short(&r.digest),
            r.runtime,
            short(&r.base_digest),
            r.created
        ));
    }
    table
}
