//! Progress of a long operation: an indicatif bar on a terminal, plain lines otherwise.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(super) enum Progress {
    Bar(ProgressBar),
    Lines {
        label: String,
        total: u64,
        done: u64,
    },
}

impl Progress {
    pub(super) fn new(bars: bool, label: String, total: u64) -> Self {
        if bars {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(label);
            Self::Bar(bar)
        } else {
            Self::Lines {
                label,
                total,
                done: 0,
            }
        }
    }

    /// `n` more rows done.
    pub(super) fn advance(&mut self, n: u64, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Self::Bar(bar) => {
                // Rows may be added while the operation runs: grow the bar rather than overflow.
                if bar.position() + n > bar.length().unwrap_or(0) {
                    bar.set_length(bar.position() + n);
                }
                bar.inc(n);
                Ok(())
            }
            Self::Lines { label, total, done } => {
                *done += n;
                writeln!(out, "{label}: {done}/{}", (*total).max(*done))
            }
        }
    }

    pub(super) fn finish(self) {
        if let Self::Bar(bar) = self {
            bar.finish();
        }
    }
}
