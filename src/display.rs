//! How `kiln build` shows its progress: on a terminal, a spinner with the elapsed time and the
//! last output line while a long step runs (install, build script); plain lines when stderr
//! is not a terminal; JSON lines on stdout with `--json`, for tools.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_builder::{Progress, Step};

/// Where and how steps are shown.
pub enum Display {
    /// Plain lines on stderr.
    Plain,
    /// Lines on stderr, long steps as a live spinner.
    Terminal(Mutex<Option<ProgressBar>>),
    /// One JSON object per step on stdout.
    Json,
}

impl Display {
    /// JSON lines when `json`, else a terminal display when stderr is one, else plain lines.
    pub fn new(json: bool) -> Display {
        if json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            Display::Terminal(Mutex::new(None))
        } else {
            Display::Plain
        }
    }

    /// Prints a line that is not a step (where the image was written, what a push did).
    pub fn line(&self, text: &str) {
        match self {
            Display::Json => {}
            Display::Plain => eprintln!("{text}"),
            Display::Terminal(_) => {
                self.finish();
                eprintln!("{text}");
            }
        }
    }

    /// Shows `title` as a live step (a spinner with the elapsed time on a terminal, a plain
    /// line otherwise) until the next line or step.
    pub fn begin(&self, title: &str) {
        match self {
            Display::Json => {}
            Display::Plain => eprintln!("{title}"),
            Display::Terminal(bar) => {
                self.finish();
                *bar.lock().unwrap() = Some(spinner(title));
            }
        }
    }

    /// Ends a spinner still running (its step is over, or the build failed during it).
    pub fn finish(&self) {
        if let Display::Terminal(bar) = self
            && let Some(bar) = bar.lock().unwrap().take()
        {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn step(&self, step: Step) {
        match (self, &step) {
            (Display::Json, _) => {
                if let Ok(line) = serde_json::to_string(&serde_json::json!({ "event": step })) {
                    println!("{line}");
                }
            }
            (Display::Plain, _) => eprintln!("{step}"),
            (Display::Terminal(bar), Step::BuildOutput(line)) => match bar.lock().unwrap().as_ref()
            {
                Some(running) => running.set_message(line.clone()),
                None => eprintln!("{step}"),
            },
            (Display::Terminal(_), Step::Installing(_) | Step::BuildScript { .. }) => {
                self.begin(&step.to_string())
            }
            (Display::Terminal(_), _) => self.line(&step.to_string()),
        }
    }
}

fn spinner(title: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(title.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
