//! A small Prometheus registry: labelled counters and histograms, rendered in the text
//! exposition format (0.0.4). Enough for the API and the operator without another
//! dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

/// Default latency buckets in seconds (1 ms to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for long operations in seconds (100 ms to 30 min).
pub const JOB_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Something that can render itself.
trait Family: Send + Sync {
    fn render(&self, out: &mut String);
}

/// A set of metric families rendered together.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Family>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A counter family with `labels`, registered here.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        CounterVec(self.family(name, help, labels, &[]))
    }

    /// A gauge family with `labels`, registered here.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        GaugeVec(self.family(name, help, labels, &[]))
    }

    /// A histogram family with `labels` and upper `buckets` (ascending), registered here.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        HistogramVec(self.family(name, help, labels, buckets))
    }

    /// A new, empty family, registered here.
    fn family<V: Send + 'static>(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Arc<Inner<V>>
    where
        Inner<V>: Family,
    {
        let f = Arc::new(Inner {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            values: Mutex::new(BTreeMap::new()),
            buckets: buckets.to_vec(),
        });
        self.push(f.clone());
        f
    }

    fn push(&self, f: Arc<dyn Family>) {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(f);
    }

    /// The HTTP answer of a `/metrics` endpoint: [`Registry::render`] with its content type.
    pub fn response(&self) -> impl axum::response::IntoResponse + use<> {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.render(),
        )
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let families = self
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        for f in families {
            f.render(&mut out);
        }
        out
    }
}

struct Inner<V> {
    name: String,
    help: String,
    labels: Vec<String>,
    values: Mutex<BTreeMap<Vec<String>, V>>,
    buckets: Vec<f64>,
}

impl<V> Inner<V> {
    fn key(&self, values: &[&str]) -> Vec<String> {
        // A wrong label count is a programming error; pad or cut rather than panic.
        (0..self.labels.len())
            .map(|i| values.get(i).copied().unwrap_or("").to_string())
            .collect()
    }

    fn label_text(&self, key: &[String], extra: Option<(&str, &str)>) -> String {
        let mut parts: Vec<String> = self
            .labels
            .iter()
            .zip(key)
            .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
            .collect();
        if let Some((n, v)) = extra {
            parts.push(format!("{n}=\"{v}\""));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A labelled monotonic counter.
#[derive(Clone)]
pub struct CounterVec(Arc<Inner<u64>>);

impl CounterVec {
    /// Adds one to the series with these label values.
    pub fn inc(&self, labels: &[&str]) {
        self.inc_by(labels, 1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, labels: &[&str], n: u64) {
        let key = self.0.key(labels);
        *self
            .0
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(0) += n;
    }

    /// The current value (0 for an unseen series).
    pub fn get(&self, labels: &[&str]) -> u64 {
        self.0.value(labels)
    }
}

/// A plain value series type: its Prometheus TYPE word.
trait Scalar: Copy + Default + std::fmt::Display + Send + 'static {
    const TYPE: &'static str;
}

impl Scalar for u64 {
    const TYPE: &'static str = "counter";
}

impl Scalar for f64 {
    const TYPE: &'static str = "gauge";
}

impl<V: Scalar> Inner<V> {
    /// The current value of one series (the default for an unseen one).
    fn value(&self, labels: &[&str]) -> V {
        let key = self.key(labels);
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or_default()
    }
}

impl<V: Scalar> Family for Inner<V> {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, V::TYPE);
        for (key, v) in self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(out, "{}{} {v}", self.name, self.label_text(key, None));
        }
    }
}

/// A labelled value that goes up and down.
#[derive(Clone)]
pub struct GaugeVec(Arc<Inner<f64>>);

impl GaugeVec {
    /// Sets the series with these label values.
    pub fn set(&self, labels: &[&str], v: f64) {
        let key = self.0.key(labels);
        self.0
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, v);
    }

    /// The current value (0 for an unseen series).
    pub fn get(&self, labels: &[&str]) -> f64 {
        self.0.value(labels)
    }
}

/// Bucket counts, sum and count of one histogram series.
#[derive(Clone, Debug, Default)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A labelled histogram.
#[derive(Clone)]
pub struct HistogramVec(Arc<Inner<HistState>>);

impl HistogramVec {
    /// Records one observation.
    pub fn observe(&self, labels: &[&str], value: f64) {
        let key = self.0.key(labels);
        let buckets = &self.0.buckets;
        let mut values = self.0.values.lock().unwrap_or_else(PoisonError::into_inner);
        let s = values.entry(key).or_insert_with(|| HistState {
            counts: vec![0; buckets.len()],
            ..HistState::default()
        });
        for (i, upper) in buckets.iter().enumerate() {
            if value <= *upper {
                s.counts[i] += 1;
            }
        }
        s.sum += value;
        s.count += 1;
    }

    /// Observations recorded for these labels.
    pub fn count(&self, labels: &[&str]) -> u64 {
        let key = self.0.key(labels);
        self.0
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(0, |s| s.count)
    }
}

impl Family for Inner<HistState> {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (key, s) in self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (upper, n) in self.buckets.iter().zip(&s.counts) {
                let le = format!("{upper}");
                let _ = writeln!(
                    out,
                    "{}_bucket{} {n}",
                    self.name,
                    self.label_text(key, Some(("le", &le)))
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                self.label_text(key, Some(("le", "+Inf"))),
                s.count
            );
            let _ = writeln!(
                out,
                "{}_sum{} {}",
                self.name,
                self.label_text(key, None),
                s.sum
            );
            let _ = writeln!(
                out,
                "{}_count{} {}",
                self.name,
                self.label_text(key, None),
                s.count
            );
        }
    }
}

impl std::fmt::Debug for CounterVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CounterVec({})", self.0.name)
    }
}

impl std::fmt::Debug for HistogramVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HistogramVec({})", self.0.name)
    }
}

impl std::fmt::Debug for GaugeVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GaugeVec({})", self.0.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let r = Registry::default();
        let c = r.counter("x_total", "Things.", &["kind"]);
        c.inc(&["a\"b"]);
        c.inc_by(&["plain"], 2);
        let h = r.histogram("x_seconds", "Durations.", &["op"], &[0.1, 1.0]);
        h.observe(&["get"], 0.05);
        h.observe(&["get"], 0.5);
        h.observe(&["get"], 5.0);
        let text = r.render();
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(text.contains("x_total{kind=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("x_total{kind=\"plain\"} 2\n"), "{text}");
        assert!(
            text.contains("x_seconds_bucket{op=\"get\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"get\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{op=\"get\"} 3\n"), "{text}");
        assert_eq!(c.get(&["plain"]), 2);
        assert_eq!(h.count(&["get"]), 3);
    }
}
