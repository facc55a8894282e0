//! A small open-loop HTTP load generator for the REST API (`cloudpods bench-api`).
//!
//! Requests are sent on a fixed schedule (request `i` at `start + i / rate`) whatever the
//! server does, and latency is measured from the *scheduled* time, so a slow server cannot
//! hide its queueing delay by slowing the client down (no coordinated omission). Latencies go
//! into a fixed-memory log-linear histogram instead of a list of samples.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Plan ordered by the `order` scenario (the cheapest built-in plan).
pub const ORDER_PLAN: &str = "student";
/// Blueprint ordered by the `order` scenario.
pub const ORDER_BLUEPRINT: &str = "ubuntu-24-minimal";

/// Largest accepted `max_in_flight`: far above any useful value, well below semaphore limits.
const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// What to load, how hard and for how long.
#[derive(Clone)]
pub struct BenchSettings {
    /// Base URL of the API, e.g. `http://127.0.0.1:8080` (plain HTTP only).
    pub base_url: String,
    /// Bearer token sent with every request; never printed.
    pub token: String,
    /// Target request rates (requests per second), one step each.
    pub rates: Vec<u32>,
    /// Length of each rate step.
    pub duration: Duration,
    /// Scenarios to run, each at every rate.
    pub scenarios: Vec<Scenario>,
    /// Cap on outstanding requests; requests over it are dropped, not delayed.
    pub max_in_flight: usize,
    /// Per-request timeout (send, response and body).
    pub timeout: Duration,
}

impl fmt::Debug for BenchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchSettings")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("rates", &self.rates)
            .field("duration", &self.duration)
            .field("scenarios", &self.scenarios)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A setting that cannot be used; names the field, never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bench setting `{field}`: {reason}")]
pub struct InvalidSetting {
    /// Field of [`BenchSettings`] at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        field,
        reason: reason.into(),
    }
}

impl BenchSettings {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.target().map(drop)
    }

    /// Validated, ready-to-use connection details.
    fn target(&self) -> Result<Target, InvalidSetting> {
        let base = self.base_url.trim().trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(invalid(
                "base_url",
                "must start with http:// (https is not supported by this tool)",
            ));
        }
        if base.contains(['?', '#']) {
            return Err(invalid("base_url", "must not contain a query or fragment"));
        }
        match list_uri(base).parse::<Uri>() {
            Ok(uri) if uri.authority().is_some_and(|a| !a.host().is_empty()) => {}
            _ => return Err(invalid("base_url", format!("not a usable URL: {base:?}"))),
        }
        if self.token.is_empty() {
            return Err(invalid("token", "must not be empty"));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| invalid("token", "contains characters not allowed in an HTTP header"))?;
        // Keeps the token out of any Debug output of requests (e.g. in hyper's traces).
        auth.set_sensitive(true);
        if self.rates.is_empty() {
            return Err(invalid("rates", "at least one rate is required"));
        }
        if self.rates.contains(&0) {
            return Err(invalid(
                "rates",
                "every rate must be > 0 requests per second",
            ));
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be > 0"));
        }
        if self.scenarios.is_empty() {
            return Err(invalid("scenarios", "at least one scenario is required"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return Err(invalid(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be > 0"));
        }
        Ok(Target {
            base: base.to_owned(),
            auth,
        })
    }
}

/// The API endpoint a scenario exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// `GET /api/cloud-pods?page=1&pageSize=20`.
    List,
    /// `GET /api/cloud-pods/{id}`, cycling over ids returned by one list call before the run.
    Detail,
    /// `POST /api/cloud-pods/order` with a fresh `Idempotency-Key` each time (creates orders!).
    Order,
}

impl Scenario {
    /// Every scenario, in the order they are usually run.
    pub const ALL: [Scenario; 3] = [Scenario::List, Scenario::Detail, Scenario::Order];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::List => "list",
            Scenario::Detail => "detail",
            Scenario::Order => "order",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scenario name that is not `list`, `detail` or `order`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario {0:?} (expected list, detail or order)")]
pub struct ParseScenarioError(pub String);

impl FromStr for Scenario {
    type Err = ParseScenarioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseScenarioError(s.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------------------------

/// Bits of sub-bucket precision: 128 linear sub-buckets per power of two (<0.4% error).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are stored exactly (one bucket per microsecond).
const EXACT: u64 = 2 * SUB;
/// Largest value the histogram distinguishes (60 s in microseconds); larger ones are clamped.
const HIST_MAX_US: u64 = 60_000_000;
const HIST_BUCKETS: usize = bucket_index(HIST_MAX_US) + 1;
// Keeps the per-step histogram small (a few KiB) if the constants above are ever changed.
const _: () = assert!(HIST_BUCKETS < 4096);

/// Bucket of a microsecond value: exact below [`EXACT`], then 128 buckets per power of two.
const fn bucket_index(us: u64) -> usize {
    if us < EXACT {
        us as usize
    } else {
        let shift = 63 - us.leading_zeros() - SUB_BITS; // >= 1, so `top` is in [SUB, 2*SUB)
        let top = us >> shift;
        (EXACT + (shift as u64 - 1) * SUB + (top - SUB)) as usize
    }
}

/// Lowest value and width of a bucket (inverse of [`bucket_index`]).
const fn bucket_range(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < EXACT {
        (i, 1)
    } else {
        let shift = (i - EXACT) / SUB + 1;
        let top = (i - EXACT) % SUB + SUB;
        (top << shift, 1 << shift)
    }
}

/// Fixed-memory log-linear latency histogram with microsecond resolution up to 60 s.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min_us: u64,
    max_us: u64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min_us", &self.min())
            .field("max_us", &self.max())
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (about 20 KiB).
    pub fn new() -> Self {
        Self {
            counts: vec![0; HIST_BUCKETS].into_boxed_slice(),
            total: 0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }

    /// Adds one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Adds one latency in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.counts[bucket_index(us.min(HIST_MAX_US))] += 1;
        self.total += 1;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Smallest sample (exact), if any.
    pub fn min(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.min_us))
    }

    /// Largest sample (exact, even above 60 s), if any.
    pub fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_us))
    }

    /// Value at quantile `q` (0.0..=1.0): the smallest sample with at least `q` of samples at or below it.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_us(q).map(Duration::from_micros)
    }

    /// [`Histogram::quantile`] in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                // The bucket midpoint halves the worst-case error; min/max are known exactly.
                let estimate = low + width / 2;
                return Some(estimate.clamp(self.min_us, self.max_us));
            }
        }
        Some(self.max_us)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Validated base URL and the ready `Authorization` header.
#[derive(Clone)]
struct Target {
    base: String,
    auth: HeaderValue,
}

fn list_uri(base: &str) -> String {
    format!("{base}/api/cloud-pods?page=1&pageSize=20")
}

/// True for ids that can go into a URL path segment without escaping.
fn is_safe_path_segment(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Builds request number `seq` of `scenario`; `ids` feeds the detail scenario.
fn build_request(
    target: &Target,
    scenario: Scenario,
    seq: u64,
    ids: &[String],
) -> anyhow::Result<Request<Full<Bytes>>> {
    let (method, uri, body) = match scenario {
        Scenario::List => (Method::GET, list_uri(&target.base), None),
        Scenario::Detail => {
            anyhow::ensure!(!ids.is_empty(), "detail scenario without pod ids");
            let id = &ids[(seq % ids.len() as u64) as usize];
            (
                Method::GET,
                format!("{}/api/cloud-pods/{id}", target.base),
                None,
            )
        }
        Scenario::Order => {
            let unique = uuid::Uuid::new_v4().simple().to_string();
            let body = json!({
                "planCode": ORDER_PLAN,
                "blueprint": ORDER_BLUEPRINT,
                "name": format!("bench-{}", &unique[..12]),
            });
            (
                Method::POST,
                format!("{}/api/cloud-pods/order", target.base),
                Some(body.to_string()),
            )
        }
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(AUTHORIZATION, target.auth.clone())
        .header(ACCEPT, "application/json");
    if scenario == Scenario::Order {
        builder = builder
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("bench-{}", uuid::Uuid::new_v4()));
    }
    let body = body.map(Bytes::from).unwrap_or_default();
    builder.body(Full::new(body)).context("building request")
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(settings: &BenchSettings) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.timeout));
    Client::builder(TokioExecutor::new())
        // Keep every connection a full in-flight window needs, so steady state reuses them.
        .pool_max_idle_per_host(settings.max_in_flight)
        .build(connector)
}

/// How one request ended.
enum Outcome {
    Response(u16),
    Timeout,
    Error(String),
}

/// Sends `req` and reads the whole body (so the connection goes back to the pool).
async fn execute(client: &HttpClient, req: Request<Full<Bytes>>, timeout: Duration) -> Outcome {
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        Ok::<_, anyhow::Error>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => Outcome::Response(status),
        Ok(Err(e)) => Outcome::Error(format!("{e:#}")),
        Err(_) => Outcome::Timeout,
    }
}

#[derive(Deserialize)]
struct ListPage {
    items: Vec<ListItem>,
}

#[derive(Deserialize)]
struct ListItem {
    #[serde(rename = "podId")]
    pod_id: Option<String>,
}

/// Pod ids for the detail scenario from one list call, or why there are none.
async fn fetch_pod_ids(
    client: &HttpClient,
    target: &Target,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let req = build_request(target, Scenario::List, 0, &[]).map_err(|e| format!("{e:#}"))?;
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("list request failed: {e:#}")),
        Err(_) => return Err(format!("list request timed out after {timeout:?}")),
    };
    if !status.is_success() {
        return Err(format!("list returned HTTP {}", status.as_u16()));
    }
    let page: ListPage = serde_json::from_slice(&body)
        .map_err(|e| format!("list response is not the expected JSON: {e}"))?;
    let ids: Vec<String> = page
        .items
        .into_iter()
        .filter_map(|i| i.pod_id)
        .filter(|id| is_safe_path_segment(id))
        .collect();
    if ids.is_empty() {
        return Err("list returned no usable pod ids".to_owned());
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Result of one scenario at one target rate.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Scenario run.
    pub scenario: Scenario,
    /// Target rate, requests per second.
    pub target_rate: u32,
    /// Why the step did not run, if it did not (all counts are then zero).
    pub skipped: Option<String>,
    /// Requests actually sent (scheduled minus dropped).
    pub sent: u64,
    /// Responses with a 2xx status.
    pub ok_2xx: u64,
    /// Responses with any other status, by status code.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Requests with no response: transport errors and timeouts.
    pub errors: u64,
    /// Of `errors`, how many were timeouts.
    pub timeouts: u64,
    /// Requests not sent because `max_in_flight` were outstanding (client saturated).
    pub dropped: u64,
    /// Wall time of the step: at least the step duration, plus any drain of late responses.
    pub wall: Duration,
    /// Completed responses (any status) per second of wall time.
    pub achieved_rps: f64,
    /// Median latency of responses (from scheduled send time), if any.
    pub p50: Option<Duration>,
    /// 90th percentile latency of responses, if any.
    pub p90: Option<Duration>,
    /// 99th percentile latency of responses, if any.
    pub p99: Option<Duration>,
    /// Largest latency of responses, if any.
    pub max: Option<Duration>,
    /// First transport error message seen, to say why `errors` is not zero.
    pub first_error: Option<String>,
}

impl StepReport {
    fn skipped(scenario: Scenario, target_rate: u32, reason: String) -> Self {
        Self {
            scenario,
            target_rate,
            skipped: Some(reason),
            sent: 0,
            ok_2xx: 0,
            non_2xx: BTreeMap::new(),
            errors: 0,
            timeouts: 0,
            dropped: 0,
            wall: Duration::ZERO,
            achieved_rps: 0.0,
            p50: None,
            p90: None,
            p99: None,
            max: None,
            first_error: None,
        }
    }

    /// Total responses with a non-2xx status.
    pub fn non_2xx_total(&self) -> u64 {
        self.non_2xx.values().sum()
    }

    /// Responses received, whatever their status.
    pub fn completed(&self) -> u64 {
        self.ok_2xx + self.non_2xx_total()
    }
}

/// Counters shared by the in-flight requests of one step.
#[derive(Default)]
struct StepStats {
    hist: Histogram,
    ok_2xx: u64,
    non_2xx: BTreeMap<u16, u64>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
}

impl StepStats {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Response(status) => {
                self.hist.record(latency);
                if (200..300).contains(&status) {
                    self.ok_2xx += 1;
                } else {
                    *self.non_2xx.entry(status).or_default() += 1;
                }
            }
            Outcome::Timeout => {
                self.errors += 1;
                self.timeouts += 1;
            }
            Outcome::Error(message) => {
                self.errors += 1;
                self.first_error.get_or_insert(message);
            }
        }
    }
}

/// Shared state of a run: one keep-alive client for every step.
struct Runner {
    client: HttpClient,
    target: Target,
    ids: Arc<[String]>,
    timeout: Duration,
    max_in_flight: usize,
}

/// Number of requests in a step: every `i` with `i / rate < duration`.
fn requests_in_step(rate: u32, duration: Duration) -> u64 {
    // Integer arithmetic: `20/s * 0.2 s` must be exactly 4, not ceil(4.000000001).
    let n = (u128::from(rate) * duration.as_nanos()).div_ceil(1_000_000_000);
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// Offset of request `seq` from the step start at `rate` requests per second.
fn schedule_offset(seq: u64, rate: u32) -> Duration {
    let nanos = u128::from(seq) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Tokio timers fire on the next 1 ms tick after the deadline; that lateness would count as
/// latency. Sleep to just before the deadline, then yield until it passes (short spin).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Returns at (or just after) `deadline`, always yielding at least once.
async fn wait_until(deadline: Instant) {
    if let Some(early) = deadline.checked_sub(TIMER_SLACK)
        && early > Instant::now()
    {
        tokio::time::sleep_until(early).await;
    }
    // Yielding (rather than returning) when already late keeps a current-thread runtime fair.
    loop {
        tokio::task::yield_now().await;
        if Instant::now() >= deadline {
            return;
        }
    }
}

impl Runner {
    async fn step(&self, scenario: Scenario, rate: u32, duration: Duration) -> StepReport {
        let total = requests_in_step(rate, duration);
        let in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        let stats = Arc::new(Mutex::new(StepStats::default()));
        let mut sent = 0u64;
        let mut dropped = 0u64;
        let start = Instant::now();
        for seq in 0..total {
            let scheduled = start + schedule_offset(seq, rate);
            wait_until(scheduled).await;
            // Never wait for a slot: waiting would silently lower the offered rate.
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                dropped += 1;
                continue;
            };
            sent += 1;
            let client = self.client.clone();
            let target = self.target.clone();
            let ids = self.ids.clone();
            let stats = stats.clone();
            let timeout = self.timeout;
            tokio::spawn(async move {
                let outcome = match build_request(&target, scenario, seq, &ids) {
                    Ok(req) => execute(&client, req, timeout).await,
                    Err(e) => Outcome::Error(format!("{e:#}")),
                };
                let latency = scheduled.elapsed();
                stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(outcome, latency);
                drop(permit);
            });
        }
        // Every permit back means every request finished (each is bounded by the timeout).
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _drained = in_flight.acquire_many(all).await;
        let wall = start.elapsed().max(duration);
        let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(PoisonError::into_inner));
        let completed = stats.ok_2xx + stats.non_2xx.values().sum::<u64>();
        StepReport {
            scenario,
            target_rate: rate,
            skipped: None,
            sent,
            ok_2xx: stats.ok_2xx,
            non_2xx: stats.non_2xx,
            errors: stats.errors,
            timeouts: stats.timeouts,
            dropped,
            wall,
            achieved_rps: completed as f64 / wall.as_secs_f64(),
            p50: stats.hist.quantile(0.50),
            p90: stats.hist.quantile(0.90),
            p99: stats.hist.quantile(0.99),
            max: stats.hist.max(),
            first_error: stats.first_error,
        }
    }
}

/// Runs every scenario at every rate, printing progress and the final table to stdout.
pub async fn run(settings: BenchSettings) -> anyhow::Result<Vec<StepReport>> {
    let mut stdout = std::io::stdout();
    run_with_output(settings, &mut stdout).await
}

/// [`run`], printing to `out` instead of stdout.
pub async fn run_with_output<W: Write + Send>(
    settings: BenchSettings,
    out: &mut W,
) -> anyhow::Result<Vec<StepReport>> {
    let target = settings.target()?;
    let client = http_client(&settings);
    let scenarios: Vec<String> = settings.scenarios.iter().map(|s| s.to_string()).collect();
    let rates: Vec<String> = settings.rates.iter().map(|r| r.to_string()).collect();
    writeln!(
        out,
        "bench-api: {} scenarios {} at {} req/s, {:?} per step, max {} in flight, timeout {:?}",
        target.base,
        scenarios.join(","),
        rates.join(","),
        settings.duration,
        settings.max_in_flight,
        settings.timeout,
    )?;

    let mut detail_skip = None;
    let mut ids = Vec::new();
    if settings.scenarios.contains(&Scenario::Detail) {
        match fetch_pod_ids(&client, &target, settings.timeout).await {
            Ok(found) => {
                writeln!(
                    out,
                    "setup: {} pod ids for the detail scenario",
                    found.len()
                )?;
                ids = found;
            }
            Err(reason) => {
                writeln!(out, "setup: detail scenario skipped: {reason}")?;
                detail_skip = Some(reason);
            }
        }
    }
    let runner = Runner {
        client,
        target,
        ids: ids.into(),
        timeout: settings.timeout,
        max_in_flight: settings.max_in_flight,
    };

    let steps = settings.scenarios.len() * settings.rates.len();
    let mut reports = Vec::with_capacity(steps);
    for &scenario in &settings.scenarios {
        for &rate in &settings.rates {
            let n = reports.len() + 1;
            if let (Scenario::Detail, Some(reason)) = (scenario, &detail_skip) {
                writeln!(
                    out,
                    "[{n}/{steps}] {scenario} at {rate}/s: skipped ({reason})"
                )?;
                reports.push(StepReport::skipped(scenario, rate, reason.clone()));
                continue;
            }
            writeln!(
                out,
                "[{n}/{steps}] {scenario} at {rate}/s for {:?} ({} requests)",
                settings.duration,
                requests_in_step(rate, settings.duration),
            )?;
            out.flush()?;
            reports.push(runner.step(scenario, rate, settings.duration).await);
        }
    }
    writeln!(out)?;
    out.write_all(format_table(&reports).as_bytes())?;
    out.flush()?;
    Ok(reports)
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1e3),
    )
}

fn ms_json(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| json!(d.as_secs_f64() * 1e3))
}

/// One row per step, with a header; non-2xx statuses and first errors follow in the last column.
pub fn format_table(reports: &[StepReport]) -> String {
    let mut lines = vec![format!(
        "{:<8} {:>7} {:>7} {:>7} {:>7} {:>5} {:>5} {:>11} {:>8} {:>8} {:>8} {:>8}  {}",
        "scenario",
        "rate/s",
        "sent",
        "2xx",
        "non2xx",
        "err",
        "drop",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "notes",
    )];
    for r in reports {
        if let Some(reason) = &r.skipped {
            lines.push(format!(
                "{:<8} {:>7}  skipped: {reason}",
                r.scenario.as_str(),
                r.target_rate
            ));
            continue;
        }
        let mut notes: Vec<String> = r
            .non_2xx
            .iter()
            .map(|(status, n)| format!("{status}={n}"))
            .collect();
        if r.timeouts > 0 {
            notes.push(format!("timeouts={}", r.timeouts));
        }
        if let Some(e) = &r.first_error {
            notes.push(format!("first error: {e}"));
        }
        lines.push(format!(
            "{:<8} {:>7} {:>7} {:>7} {:>7} {:>5} {:>5} {:>11.1} {:>8} {:>8} {:>8} {:>8}  {}",
            r.scenario.as_str(),
            r.target_rate,
            r.sent,
            r.ok_2xx,
            r.non_2xx_total(),
            r.errors,
            r.dropped,
            r.achieved_rps,
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.max),
            notes.join(" "),
        ));
    }
    // Rows without notes would otherwise end in padding.
    lines
        .iter()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// The reports as a JSON array (camelCase keys, latencies in milliseconds, `null` when absent).
pub fn to_json(reports: &[StepReport]) -> serde_json::Value {
    reports
        .iter()
        .map(|r| {
            let non_2xx: serde_json::Map<String, serde_json::Value> = r
                .non_2xx
                .iter()
                .map(|(status, n)| (status.to_string(), json!(n)))
                .collect();
            json!({
                "scenario": r.scenario.as_str(),
                "targetRate": r.target_rate,
                "skipped": r.skipped,
                "sent": r.sent,
                "ok2xx": r.ok_2xx,
                "non2xx": non_2xx,
                "non2xxTotal": r.non_2xx_total(),
                "errors": r.errors,
                "timeouts": r.timeouts,
                "dropped": r.dropped,
                "wallSeconds": r.wall.as_secs_f64(),
                "achievedRps": r.achieved_rps,
                "latencyMs": {
                    "p50": ms_json(r.p50),
                    "p90": ms_json(r.p90),
                    "p99": ms_json(r.p99),
                    "max": ms_json(r.max),
                },
                "firstError": r.first_error,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    const TOKEN: &str = "s3cr3t-t0ken-value";

    fn settings(base_url: String) -> BenchSettings {
        BenchSettings {
            base_url,
            token: TOKEN.to_owned(),
            rates: vec![50, 200],
            duration: Duration::from_secs(1),
            scenarios: Scenario::ALL.to_vec(),
            max_in_flight: 512,
            timeout: Duration::from_secs(5),
        }
    }

    /// Deterministic xorshift so the accuracy test needs no extra crates.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn bucket_index_and_range_are_inverse_and_monotonic() {
        let mut prev = 0;
        for us in [
            0u64,
            1,
            255,
            256,
            257,
            511,
            512,
            1000,
            65_535,
            1 << 20,
            HIST_MAX_US,
        ] {
            let i = bucket_index(us);
            assert!(i >= prev, "index not monotonic at {us}");
            prev = i;
            let (low, width) = bucket_range(i);
            assert!(
                low <= us && us < low + width,
                "{us} not in bucket [{low}, +{width})"
            );
            assert!(width as f64 / low.max(1) as f64 <= 1.0 / 128.0 + 1e-9 || low < EXACT);
        }
        for i in 0..HIST_BUCKETS {
            assert_eq!(bucket_index(bucket_range(i).0), i);
        }
        assert_eq!(HIST_BUCKETS, bucket_index(HIST_MAX_US) + 1);
    }

    #[test]
    fn histogram_small_values_are_exact() {
        let mut h = Histogram::new();
        for us in 1..=100 {
            h.record_us(us);
        }
        assert_eq!(h.len(), 100);
        assert_eq!(h.quantile_us(0.5), Some(50));
        assert_eq!(h.quantile_us(0.9), Some(90));
        assert_eq!(h.quantile_us(0.99), Some(99));
        assert_eq!(h.quantile_us(1.0), Some(100));
        assert_eq!(h.quantile_us(0.0), Some(1));
        assert_eq!(h.min(), Some(Duration::from_micros(1)));
        assert_eq!(h.max(), Some(Duration::from_micros(100)));
    }

    #[test]
    fn histogram_percentiles_within_one_percent() {
        // Log-uniform samples from 10 us to ~10 s: every bucket scale gets exercised.
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut samples: Vec<u64> = (0..200_000)
            .map(|_| {
                let unit = (xorshift(&mut rng) >> 11) as f64 / (1u64 << 53) as f64;
                (10.0 * 1e6f64.powf(unit)) as u64
            })
            .collect();
        let mut h = Histogram::new();
        for &s in &samples {
            h.record(Duration::from_micros(s));
        }
        samples.sort_unstable();
        for q in [0.01, 0.1, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999] {
            let rank = ((q * samples.len() as f64).ceil() as usize).max(1);
            let exact = samples[rank - 1] as f64;
            let got = h.quantile_us(q).unwrap() as f64;
            let err = (got - exact).abs() / exact;
            assert!(err < 0.01, "q={q}: exact {exact} got {got} err {err:.4}");
        }
        assert_eq!(h.max_us, *samples.last().unwrap());
    }

    #[test]
    fn histogram_clamps_above_range_but_keeps_exact_max_and_merges() {
        let mut a = Histogram::new();
        a.record(Duration::from_secs(120));
        a.record(Duration::from_millis(5));
        let mut b = Histogram::new();
        b.record(Duration::from_millis(1));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.max(), Some(Duration::from_secs(120)));
        assert_eq!(a.min(), Some(Duration::from_millis(1)));
        let p100 = a.quantile(1.0).unwrap();
        assert!(p100 >= Duration::from_secs(59) && p100 <= Duration::from_secs(120));
        assert!(Histogram::new().quantile(0.5).is_none());
        assert!(Histogram::new().is_empty());
    }

    #[test]
    fn scenario_parse_and_display_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.to_string().parse::<Scenario>(), Ok(s));
        }
        assert_eq!(" Order ".parse::<Scenario>(), Ok(Scenario::Order));
        let err = "delete".parse::<Scenario>().unwrap_err();
        assert!(err.to_string().contains("delete"));
    }

    #[test]
    fn debug_redacts_token() {
        let s = settings("http://127.0.0.1:1".into());
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(TOKEN), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn validation_names_the_field() {
        let ok = settings("http://127.0.0.1:8080/".into());
        assert_eq!(ok.validate(), Ok(()));
        type Mutation = fn(&mut BenchSettings);
        let cases: Vec<(&str, Mutation)> = vec![
            ("base_url", |s| s.base_url = "https://x".into()),
            ("base_url", |s| s.base_url = "127.0.0.1:80".into()),
            ("base_url", |s| s.base_url = "http://".into()),
            ("base_url", |s| s.base_url = "http://h/?a=1".into()),
            ("token", |s| s.token.clear()),
            ("token", |s| s.token = format!("{TOKEN}\n")),
            ("rates", |s| s.rates.clear()),
            ("rates", |s| s.rates = vec![10, 0]),
            ("duration", |s| s.duration = Duration::ZERO),
            ("scenarios", |s| s.scenarios.clear()),
            ("max_in_flight", |s| s.max_in_flight = 0),
            ("timeout", |s| s.timeout = Duration::ZERO),
        ];
        for (field, mutate) in cases {
            let mut s = ok.clone();
            mutate(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(field));
            assert!(!err.to_string().contains(TOKEN));
        }
    }

    #[test]
    fn requests_are_built_per_scenario() {
        let target = settings("http://api.test:8080/".into()).target().unwrap();
        assert_eq!(target.base, "http://api.test:8080");
        let ids = vec!["pod-a".to_owned(), "pod-b".to_owned()];

        let list = build_request(&target, Scenario::List, 7, &ids).unwrap();
        assert_eq!(list.method(), Method::GET);
        assert_eq!(
            list.uri().to_string(),
            "http://api.test:8080/api/cloud-pods?page=1&pageSize=20"
        );
        assert_eq!(list.headers()[AUTHORIZATION], format!("Bearer {TOKEN}"));
        assert!(list.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(list.headers()[ACCEPT], "application/json");
        assert!(!format!("{list:?}").contains(TOKEN));

        let uris: Vec<String> = (0..4)
            .map(|seq| {
                build_request(&target, Scenario::Detail, seq, &ids)
                    .unwrap()
                    .uri()
                    .path()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            uris,
            [
                "/api/cloud-pods/pod-a",
                "/api/cloud-pods/pod-b",
                "/api/cloud-pods/pod-a",
                "/api/cloud-pods/pod-b"
            ]
        );
        assert!(build_request(&target, Scenario::Detail, 0, &[]).is_err());

        let a = build_request(&target, Scenario::Order, 0, &ids).unwrap();
        let b = build_request(&target, Scenario::Order, 1, &ids).unwrap();
        assert_eq!(a.method(), Method::POST);
        assert_eq!(a.uri().path(), "/api/cloud-pods/order");
        assert_eq!(a.headers()[CONTENT_TYPE], "application/json");
        let key =
            |r: &Request<Full<Bytes>>| r.headers()["idempotency-key"].to_str().unwrap().to_owned();
        assert!(key(&a).starts_with("bench-"));
        assert_ne!(key(&a), key(&b));
        let body = futures::executor::block_on(a.into_body().collect())
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["planCode"], "student");
        assert_eq!(body["blueprint"], "ubuntu-24-minimal");
        let name = body["name"].as_str().unwrap();
        assert!(
            name.starts_with("bench-") && name.len() == "bench-".len() + 12,
            "{name}"
        );
    }

    #[test]
    fn unsafe_ids_are_rejected() {
        assert!(is_safe_path_segment("pod-1a2b_c.d~e"));
        for bad in ["", ".", "..", "a/b", "a b", "a?b", "é"] {
            assert!(!is_safe_path_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn table_and_json_shapes() {
        let mut non_2xx = BTreeMap::new();
        non_2xx.insert(403, 3);
        let r = StepReport {
            scenario: Scenario::Order,
            target_rate: 10,
            skipped: None,
            sent: 10,
            ok_2xx: 6,
            non_2xx,
            errors: 1,
            timeouts: 1,
            dropped: 2,
            wall: Duration::from_secs(1),
            achieved_rps: 9.0,
            p50: Some(Duration::from_micros(1500)),
            p90: Some(Duration::from_millis(2)),
            p99: Some(Duration::from_millis(3)),
            max: Some(Duration::from_millis(4)),
            first_error: None,
        };
        let skipped = StepReport::skipped(Scenario::Detail, 10, "no ids".into());
        let table = format_table(&[r.clone(), skipped.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("scenario  rate/s"));
        assert!(
            lines[1].contains("1.50") && lines[1].contains("403=3"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("timeouts=1"));
        assert!(lines[2].contains("skipped: no ids"));

        let j = to_json(&[r, skipped]);
        assert_eq!(j[0]["scenario"], "order");
        assert_eq!(j[0]["non2xx"]["403"], 3);
        assert_eq!(j[0]["non2xxTotal"], 3);
        assert_eq!(j[0]["latencyMs"]["p50"], 1.5);
        assert_eq!(j[1]["skipped"], "no ids");
        assert!(j[1]["latencyMs"]["p99"].is_null());
    }

    // -- stub server --------------------------------------------------------------------------

    /// What the stub API saw.
    #[derive(Default)]
    struct Stub {
        pods: Vec<&'static str>,
        orders_accepted: usize,
        order_calls: AtomicUsize,
        good_auth: AtomicUsize,
        bad_auth: AtomicUsize,
        detail_ids: Mutex<HashSet<String>>,
        idempotency_keys: Mutex<HashSet<String>>,
        bad_orders: AtomicUsize,
    }

    impl Stub {
        fn check(&self, headers: &HeaderMap) {
            let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
                && headers.get("accept").and_then(|v| v.to_str().ok()) == Some("application/json");
            let counter = if auth_ok {
                &self.good_auth
            } else {
                &self.bad_auth
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn list(State(s): State<Arc<Stub>>, headers: HeaderMap) -> Json<serde_json::Value> {
        s.check(&headers);
        let items: Vec<_> = s
            .pods
            .iter()
            .map(|id| json!({"podId": id, "name": "x", "status": "Running"}))
            .collect();
        Json(json!({"items": items, "page": 1, "pageSize": 20, "total": items.len()}))
    }

    async fn detail(
        State(s): State<Arc<Stub>>,
        Path(id): Path<String>,
        headers: HeaderMap,
    ) -> StatusCode {
        s.check(&headers);
        let known = s.pods.contains(&id.as_str());
        s.detail_ids.lock().unwrap().insert(id);
        if known {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        }
    }

    async fn order(
        State(s): State<Arc<Stub>>,
        headers: HeaderMap,
        Json(body): Json<serde_json::Value>,
    ) -> StatusCode {
        s.check(&headers);
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let fresh = key.starts_with("bench-") && s.idempotency_keys.lock().unwrap().insert(key);
        let body_ok = body["planCode"] == "student"
            && body["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("bench-"));
        if !fresh || !body_ok {
            s.bad_orders.fetch_add(1, Ordering::Relaxed);
        }
        if s.order_calls.fetch_add(1, Ordering::Relaxed) < s.orders_accepted {
            StatusCode::ACCEPTED
        } else {
            StatusCode::FORBIDDEN
        }
    }

    async fn start_stub(stub: Stub) -> (String, Arc<Stub>) {
        let stub = Arc::new(stub);
        let app = axum::Router::new()
            .route("/api/cloud-pods", get(list))
            .route("/api/cloud-pods/order", post(order))
            .route("/api/cloud-pods/{id}", get(detail))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), stub)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn runs_every_scenario_against_a_stub_server() {
        let (base, stub) = start_stub(Stub {
            pods: vec!["pod-a", "pod-b"],
            orders_accepted: 30,
            ..Stub::default()
        })
        .await;
        let mut out = Vec::new();
        let reports = run_with_output(settings(base), &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains(TOKEN), "token printed:\n{out}");
        assert!(out.contains("[1/6] list at 50/s"), "{out}");
        assert!(out.contains("setup: 2 pod ids"), "{out}");
        assert!(out.contains("achieved/s"), "{out}");

        assert_eq!(reports.len(), 6);
        let mut total_sent = 0;
        for r in &reports {
            let what = format!("{} at {}/s: {r:?}", r.scenario, r.target_rate);
            assert!(r.skipped.is_none(), "{what}");
            assert_eq!(
                r.sent + r.dropped,
                f64::from(r.target_rate) as u64,
                "{what}"
            );
            assert_eq!(r.sent, r.ok_2xx + r.non_2xx_total() + r.errors, "{what}");
            assert_eq!((r.errors, r.dropped), (0, 0), "{what}");
            let ratio = r.achieved_rps / f64::from(r.target_rate);
            assert!((0.5..=1.1).contains(&ratio), "{what}: ratio {ratio}");
            assert!(
                r.p50.is_some() && r.p50 <= r.p99 && r.p99 <= r.max,
                "{what}"
            );
            if r.scenario != Scenario::Order {
                assert_eq!(r.ok_2xx, r.sent, "{what}");
            }
            total_sent += r.sent;
        }
        let orders: Vec<&StepReport> = reports
            .iter()
            .filter(|r| r.scenario == Scenario::Order)
            .collect();
        assert_eq!(orders.iter().map(|r| r.ok_2xx).sum::<u64>(), 30);
        assert_eq!(orders[0].non_2xx.get(&403), Some(&20));
        assert_eq!(orders[1].non_2xx.get(&403), Some(&200));
        assert_eq!(stub.bad_orders.load(Ordering::Relaxed), 0);
        assert_eq!(stub.idempotency_keys.lock().unwrap().len(), 250);

        let seen = stub.detail_ids.lock().unwrap().clone();
        assert_eq!(
            seen,
            HashSet::from(["pod-a".to_owned(), "pod-b".to_owned()])
        );
        // Every request, plus the setup list call, carried the bearer token.
        assert_eq!(stub.bad_auth.load(Ordering::Relaxed), 0);
        assert_eq!(
            stub.good_auth.load(Ordering::Relaxed) as u64,
            total_sent + 1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detail_is_skipped_without_pods() {
        let (base, stub) = start_stub(Stub::default()).await;
        let mut s = settings(base);
        s.scenarios = vec![Scenario::Detail];
        s.rates = vec![20];
        let mut out = Vec::new();
        let reports = run_with_output(s, &mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(reports.len(), 1);
        let reason = reports[0].skipped.as_deref().unwrap();
        assert!(reason.contains("no usable pod ids"), "{reason}");
        assert!(out.contains("skipped"), "{out}");
        assert!(!out.contains(TOKEN));
        assert_eq!(stub.good_auth.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn unreachable_server_counts_errors_not_responses() {
        // Bind then drop a listener to get a port nobody listens on.
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let mut s = settings(format!("http://{addr}"));
        s.scenarios = vec![Scenario::List];
        s.rates = vec![20];
        s.duration = Duration::from_millis(200);
        let mut out = Vec::new();
        let reports = run_with_output(s, &mut out).await.unwrap();
        let r = &reports[0];
        assert_eq!(r.sent, 4);
        assert_eq!(r.errors, r.sent, "{r:?}");
        assert_eq!(r.completed(), 0);
        assert!(r.p50.is_none());
        assert!(r.first_error.is_some());
        assert!(!String::from_utf8(out).unwrap().contains(TOKEN));
    }

    #[tokio::test]
    async fn run_rejects_invalid_settings_before_sending() {
        let mut s = settings("ftp://x".into());
        s.rates = vec![];
        let err = run_with_output(s, &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("base_url"), "{err}");
    }
}
