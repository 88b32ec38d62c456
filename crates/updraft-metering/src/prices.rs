//! Prices and bills. The default price sheet mirrors AWS's public list
//! prices (Lambda x86 in us-east-1 for requests and compute, DynamoDB
//! on-demand reads for key-value operations, S3 PUT requests for blob
//! operations, internet egress for bytes out), so a bill compares with what
//! the same load would cost there. No free tier is subtracted.
//!
//! Money is counted in integers: prices become picodollars (10⁻¹² $), each
//! line is its integer quantity times its price, rounded to the cent once,
//! and the total is the sum of the lines. A bill recomputed from the raw
//! records therefore matches to the cent.

use serde::{Deserialize, Serialize};

use crate::MeteringError;
use crate::store::Aggregate;

const PICO_PER_USD: f64 = 1e12;
const PICO_PER_CENT: u128 = 10_000_000_000;
const GIB: u128 = 1 << 30;

/// `[prices]` of the server config, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PriceSheet {
    /// Per million invocations (Lambda: $0.20).
    pub requests_per_million: f64,
    /// Per GB-second of configured memory × billed time (Lambda x86: $0.0000166667).
    pub gb_second: f64,
    /// Per million key-value operations (DynamoDB on-demand read request
    /// units: $0.125).
    pub kv_ops_per_million: f64,
    /// Per million blob operations (S3 standard PUT: $5.00).
    pub blob_ops_per_million: f64,
    /// Per GiB of response bytes and of outgoing request bodies (internet
    /// egress: $0.09).
    pub gb_out: f64,
    /// Per million outgoing HTTP requests a guest sends. Lambda charges
    /// none beyond the bytes: $0 unless the operator sets one.
    pub outbound_requests_per_million: f64,
    /// Per GiB-month of key-value data, keys and values (DynamoDB standard
    /// table storage: $0.25).
    pub kv_gb_month: f64,
    /// Per GiB-month of blobs (S3 Standard, first 50 TB: $0.023).
    pub blob_gb_month: f64,
}

impl Default for PriceSheet {
    fn default() -> Self {
        PriceSheet {
            requests_per_million: 0.20,
            gb_second: 0.000_016_666_7,
            kv_ops_per_million: 0.125,
            blob_ops_per_million: 5.00,
            gb_out: 0.09,
            outbound_requests_per_million: 0.0,
            kv_gb_month: 0.25,
            blob_gb_month: 0.023,
        }
    }
}

impl PriceSheet {
    /// Refuses prices that are negative or not numbers.
    pub fn validate(&self) -> Result<(), MeteringError> {
        for (name, value) in [
            ("requests_per_million", self.requests_per_million),
            ("gb_second", self.gb_second),
            ("kv_ops_per_million", self.kv_ops_per_million),
            ("blob_ops_per_million", self.blob_ops_per_million),
            ("gb_out", self.gb_out),
            (
                "outbound_requests_per_million",
                self.outbound_requests_per_million,
            ),
            ("kv_gb_month", self.kv_gb_month),
            ("blob_gb_month", self.blob_gb_month),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(MeteringError::Invalid(format!(
                    "[prices] {name} = {value}: use a price in dollars, 0 or more"
                )));
            }
        }
        Ok(())
    }
}

fn pico(usd: f64) -> u128 {
    (usd * PICO_PER_USD).round() as u128
}

/// Picodollars to cents, half up.
fn cents(pico: u128) -> u64 {
    ((pico + PICO_PER_CENT / 2) / PICO_PER_CENT) as u64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BillLine {
    pub item: String,
    pub quantity: String,
    pub unit_price_usd: f64,
    pub unit: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bill {
    pub lines: Vec<BillLine>,
    pub total_cents: u64,
}

/// Each line's exact amount, in picodollars: requests, compute, key-value
/// operations, blob operations, data out, key-value storage, blob storage,
/// outbound requests, outbound data.
/// GB-seconds are MB-ms ÷ 1,024,000, as Lambda counts memory; a GB-month is
/// a GiB kept [`HOURS_PER_MONTH`] hours.
fn line_picos(prices: &PriceSheet, sums: &Aggregate) -> [u128; 9] {
    let million = 1_000_000u128;
    let gib_month = GIB * HOURS_PER_MONTH as u128;
    [
        u128::from(sums.invocations) * pico(prices.requests_per_million) / million,
        u128::from(sums.mb_ms) * pico(prices.gb_second) / 1_024_000,
        u128::from(sums.kv_ops) * pico(prices.kv_ops_per_million) / million,
        u128::from(sums.blob_ops) * pico(prices.blob_ops_per_million) / million,
        u128::from(sums.bytes_out) * pico(prices.gb_out) / GIB,
        u128::from(sums.kv_byte_hours) * pico(prices.kv_gb_month) / gib_month,
        u128::from(sums.blob_byte_hours) * pico(prices.blob_gb_month) / gib_month,
        u128::from(sums.outbound_requests) * pico(prices.outbound_requests_per_million) / million,
        u128::from(sums.outbound_bytes) * pico(prices.gb_out) / GIB,
    ]
}

fn gb_months(byte_hours: u64) -> String {
    format!(
        "{:.6} GB-month",
        byte_hours as f64 / (GIB as f64 * HOURS_PER_MONTH)
    )
}

/// The bill of `sums` at `prices`.
pub fn bill(prices: &PriceSheet, sums: &Aggregate) -> Bill {
    let described = [
        (
            "requests",
            sums.invocations.to_string(),
            prices.requests_per_million,
            "per million",
        ),
        (
            "compute",
            format!("{:.3} GB-s", sums.mb_ms as f64 / 1_024_000.0),
            prices.gb_second,
            "per GB-second",
        ),
        (
            "key-value operations",
            sums.kv_ops.to_string(),
            prices.kv_ops_per_million,
            "per million",
        ),
        (
            "blob operations",
            sums.blob_ops.to_string(),
            prices.blob_ops_per_million,
            "per million",
        ),
        (
            "data out",
            format!("{} bytes", sums.bytes_out),
            prices.gb_out,
            "per GiB",
        ),
        (
            "key-value storage",
            gb_months(sums.kv_byte_hours),
            prices.kv_gb_month,
            "per GB-month",
        ),
        (
            "blob storage",
            gb_months(sums.blob_byte_hours),
            prices.blob_gb_month,
            "per GB-month",
        ),
        (
            "outbound requests",
            sums.outbound_requests.to_string(),
            prices.outbound_requests_per_million,
            "per million",
        ),
        (
            "outbound data",
            format!("{} bytes", sums.outbound_bytes),
            prices.gb_out,
            "per GiB",
        ),
    ];
    let lines: Vec<BillLine> = described
        .into_iter()
        .zip(line_picos(prices, sums))
        .map(|((item, quantity, price, unit), amount)| BillLine {
            item: item.to_string(),
            quantity,
            unit_price_usd: price,
            unit: unit.to_string(),
            amount_cents: cents(amount),
        })
        .collect();
    let total_cents = lines.iter().map(|l| l.amount_cents).sum();
    Bill { lines, total_cents }
}

/// The exact cost of `sums`, in picodollars (for budgets, which must not
/// wait for a cent to accumulate).
pub fn cost_pico(prices: &PriceSheet, sums: &Aggregate) -> u128 {
    line_picos(prices, sums).iter().sum()
}

pub fn pico_to_cents(pico: u128) -> u64 {
    cents(pico)
}

pub fn cents_to_pico(cents: u64) -> u128 {
    u128::from(cents) * PICO_PER_CENT
}

/// A steady load, as the estimate takes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Load {
    pub rps: f64,
    /// Each request's duration (billed rounded up to the millisecond).
    pub duration_ms: f64,
    pub memory_mb: u32,
    /// Key-value operations of each request.
    pub kv_ops: f64,
    /// Response bytes of each request.
    pub bytes_out: f64,
    /// GiB kept in key-value stores all month.
    pub kv_stored_gb: f64,
    /// GiB kept as blobs all month.
    pub blob_stored_gb: f64,
}

/// What a steady load would cost a month, and where a reserved server
/// becomes cheaper.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub requests_per_month: u64,
    pub monthly_usd: f64,
    /// Cost of one invocation, in dollars.
    pub per_request_usd: f64,
    /// What the stored data costs a month, whatever the request rate.
    pub storage_monthly_usd: f64,
    pub server_monthly_usd: Option<f64>,
    /// Requests per second above which the reserved server is cheaper.
    pub break_even_rps: Option<f64>,
}

/// Hours in a month, for the estimate and for GB-months (365 × 24 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// `load` for a month, compared with a server at `server_usd_per_hour`.
/// The server is taken to hold the same data on its own disk, so storage
/// counts against the serverless side of the break-even.
pub fn estimate(prices: &PriceSheet, load: &Load, server_usd_per_hour: Option<f64>) -> Estimate {
    let billed_ms = load.duration_ms.ceil().max(1.0);
    let per_request_usd = prices.requests_per_million / 1e6
        + f64::from(load.memory_mb) / 1024.0 * billed_ms / 1000.0 * prices.gb_second
        + load.kv_ops * prices.kv_ops_per_million / 1e6
        + load.bytes_out / GIB as f64 * prices.gb_out;
    let storage_monthly_usd =
        load.kv_stored_gb * prices.kv_gb_month + load.blob_stored_gb * prices.blob_gb_month;
    let requests = load.rps * HOURS_PER_MONTH * 3600.0;
    let server_monthly_usd = server_usd_per_hour.map(|p| p * HOURS_PER_MONTH);
    Estimate {
        requests_per_month: requests.round() as u64,
        monthly_usd: requests * per_request_usd + storage_monthly_usd,
        per_request_usd,
        storage_monthly_usd,
        server_monthly_usd,
        break_even_rps: server_monthly_usd
            .filter(|_| per_request_usd > 0.0)
            .map(|server| {
                ((server - storage_monthly_usd) / per_request_usd / (HOURS_PER_MONTH * 3600.0))
                    .max(0.0)
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_list_prices_give_lambda_bills() {
        // 1M requests of 100 ms at 128 MB: Lambda charges $0.20 + $0.21.
        let sums = Aggregate {
            invocations: 1_000_000,
            mb_ms: 128 * 100 * 1_000_000,
            ..Aggregate::default()
        };
        let bill = bill(&PriceSheet::default(), &sums);
        assert_eq!(bill.lines[0].amount_cents, 20);
        assert_eq!(bill.lines[1].amount_cents, 21);
        assert_eq!(bill.total_cents, 41);
        let pico = cost_pico(&PriceSheet::default(), &sums);
        assert_eq!(pico_to_cents(pico), 41);
    }

    #[test]
    fn break_even_against_a_server() {
        // $0.10/h server; 100 ms at 128 MB ≈ $0.000000408 a request.
        let mut load = Load {
            rps: 10.0,
            duration_ms: 100.0,
            memory_mb: 128,
            kv_ops: 0.0,
            bytes_out: 0.0,
            kv_stored_gb: 0.0,
            blob_stored_gb: 0.0,
        };
        let e = estimate(&PriceSheet::default(), &load, Some(0.10));
        assert_eq!(e.requests_per_month, 26_280_000);
        assert!((e.monthly_usd - 10.73).abs() < 0.01, "{e:?}");
        let rps = e.break_even_rps.unwrap();
        // $73 a month / $0.000000408 a request / 2.628M seconds a month.
        assert!((rps - 68.0).abs() < 0.1, "{e:?}");
        // 10 GiB of key-value data: $2.50 a month more, at any rate, so the
        // server wins earlier.
        load.kv_stored_gb = 10.0;
        let with_data = estimate(&PriceSheet::default(), &load, Some(0.10));
        assert!(
            (with_data.storage_monthly_usd - 2.5).abs() < 1e-9,
            "{with_data:?}"
        );
        assert!(
            (with_data.monthly_usd - 13.23).abs() < 0.01,
            "{with_data:?}"
        );
        assert!(with_data.break_even_rps.unwrap() < rps);
    }

    #[test]
    fn storage_is_billed_per_gb_month() {
        // 10 GiB of key-value data and 100 GiB of blobs for a whole month.
        let hours = HOURS_PER_MONTH as u64;
        let sums = Aggregate {
            kv_byte_hours: 10 * (1 << 30) * hours,
            blob_byte_hours: 100 * (1 << 30) * hours,
            ..Aggregate::default()
        };
        let bill = bill(&PriceSheet::default(), &sums);
        let line = |item: &str| bill.lines.iter().find(|l| l.item == item).unwrap().clone();
        assert_eq!(line("key-value storage").amount_cents, 250);
        assert_eq!(line("key-value storage").quantity, "10.000000 GB-month");
        assert_eq!(line("blob storage").amount_cents, 230);
        assert_eq!(bill.total_cents, 480);
    }

    #[test]
    fn bad_prices_are_refused() {
        let sheet = PriceSheet {
            gb_second: -1.0,
            ..PriceSheet::default()
        };
        assert!(
            sheet
                .validate()
                .unwrap_err()
                .to_string()
                .contains("gb_second")
        );
    }
}
