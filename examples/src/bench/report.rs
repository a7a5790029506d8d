//! What a scenario prints: a table of medians, minima and ratios, and notes.

use std::fmt::Write as _;
use std::time::Duration;

/// How much work one run does, to print a rate beside the times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Bytes moved (printed as MiB/s).
    Bytes(u64),
    /// Items handled (printed as `<unit>/s`).
    Items(u64, &'static str),
}

impl Work {
    fn rate(self, took: Duration) -> String {
        let secs = took.as_secs_f64().max(1e-9);
        match self {
            Work::Bytes(b) => format!("{:.0} MiB/s", b as f64 / (1024.0 * 1024.0) / secs),
            Work::Items(n, unit) => format!("{} {unit}/s", thousands(n as f64 / secs)),
        }
    }
}

/// The timings of one contender (the framework or a reference tool) over the repetitions.
#[derive(Debug, Clone)]
pub struct Timings {
    /// What ran, as printed.
    pub label: String,
    /// One duration per repetition.
    pub samples: Vec<Duration>,
    /// The work of one run.
    pub work: Option<Work>,
    /// Whether this is the framework (the numerator of the ratios).
    pub framework: bool,
    /// Whether to print a ratio on this row.
    pub ratio: bool,
}

impl Timings {
    /// The framework's timings.
    pub fn framework(label: impl Into<String>, work: Option<Work>) -> Self {
        Self {
            label: label.into(),
            samples: Vec::new(),
            work,
            framework: true,
            ratio: true,
        }
    }

    /// Another measurement of the framework, printed without a ratio.
    pub fn extra(label: impl Into<String>, work: Option<Work>) -> Self {
        Self {
            label: label.into(),
            samples: Vec::new(),
            work,
            framework: false,
            ratio: false,
        }
    }

    /// A reference tool's timings.
    pub fn tool(label: impl Into<String>, work: Option<Work>) -> Self {
        Self {
            label: label.into(),
            samples: Vec::new(),
            work,
            framework: false,
            ratio: true,
        }
    }

    /// The median (the mean of the two middle samples for an even count).
    pub fn median(&self) -> Option<Duration> {
        median(&self.samples)
    }

    /// The minimum.
    pub fn min(&self) -> Option<Duration> {
        self.samples.iter().min().copied()
    }
}

/// The median of `samples`.
pub fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// The `p`-th percentile (0-100, nearest rank) of `samples`.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A duration as printed: milliseconds under 10 s, seconds above.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.01 {
        format!("{:.2} ms", secs * 1000.0)
    } else if secs < 10.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else {
        format!("{secs:.1} s")
    }
}

/// `n` with thousands separators, no decimals.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One scenario's output: a table and notes.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// What it measures, one line.
    pub title: String,
    /// The column headers.
    pub headers: Vec<String>,
    /// The rows (cells as printed).
    pub rows: Vec<Vec<String>>,
    /// Notes printed under the table: skipped tools, missing APIs, memory.
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str, title: impl Into<String>) -> Self {
        Self {
            scenario: scenario.to_owned(),
            title: title.into(),
            ..Self::default()
        }
    }

    /// Adds the timing table of `contenders`: median, minimum, rate at the median, and the
    /// ratio framework / contender of the medians (how many times slower the framework is).
    pub fn timings(&mut self, contenders: &[Timings]) {
        self.headers = [
            "contender",
            "median",
            "min",
            "rate (median)",
            "framework / this",
        ]
        .map(String::from)
        .to_vec();
        let framework = contenders
            .iter()
            .find(|c| c.framework)
            .and_then(Timings::median);
        for c in contenders.iter().filter(|c| !c.samples.is_empty()) {
            let (Some(med), Some(min)) = (c.median(), c.min()) else {
                self.rows.push(vec![
                    c.label.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "no runs".into(),
                ]);
                continue;
            };
            let ratio = match framework {
                _ if !c.ratio => "-".to_owned(),
                _ if c.framework => "1.00x".to_owned(),
                Some(f) => format!("{:.2}x", f.as_secs_f64() / med.as_secs_f64().max(1e-9)),
                None => "-".to_owned(),
            };
            self.rows.push(vec![
                c.label.clone(),
                duration(med),
                duration(min),
                c.work.map_or_else(|| "-".to_owned(), |w| w.rate(med)),
                ratio,
            ]);
        }
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}: {}", self.scenario, self.title);
        let columns = self.headers.len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i == 0 {
                    let _ = write!(l, "{cell:<w$}");
                } else {
                    let _ = write!(l, "  {cell:>w$}");
                }
            }
            l.trim_end().to_owned()
        };
        if columns > 0 {
            let _ = writeln!(out, "{}", line(&self.headers));
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
            for row in &self.rows {
                let _ = writeln!(out, "{}", line(row));
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  - {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_percentiles_and_ratios() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Some(Duration::from_micros(2500))
        );
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(ms(50)));
        assert_eq!(percentile(&hundred, 99.0), Some(ms(99)));
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        let mut fw = Timings::framework("framework", Some(Work::Items(1000, "ev")));
        fw.samples = vec![ms(400), ms(200)];
        let mut tool = Timings::tool("cp -r", None);
        tool.samples = vec![ms(100)];
        let mut report = Report::new("x", "y");
        report.timings(&[fw, tool]);
        assert_eq!(report.rows[0][3], "3,333 ev/s");
        assert_eq!(report.rows[1][4], "3.00x");
        assert!(report.render().contains("cp -r"));
    }
}
