//! Spinners for slow steps. indicatif draws on stderr and hides itself when
//! stderr is not a terminal (CI), so output stays clean there.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// A spinner with a message and the elapsed time.
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
