//! Usage, bills, prices and budgets of the caller's tenant (an admin key
//! may name another with `?tenant=`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use updraft_core::UsageRecord;
use updraft_metering::prices::{BillLine, PriceSheet};
use updraft_metering::{
    Aggregate, BudgetStatus, GroupBy, HOUR_MS, Metering, month_of, month_range,
};
use updraft_scheduler::{Caller, Platform, PlatformError, TenantQuota};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, Query};
use crate::json::SortedJson;

type Shared = State<Arc<Platform>>;

/// Largest monthly budget, in dollars: a larger one is likelier a typo.
const BUDGET_USD_MAX: f64 = 1e9;

/// Metering, with every node's usage so far read in (cluster mode).
async fn metering_now(platform: &Platform) -> Result<&Arc<Metering>, ApiError> {
    let metering = metering(platform)?;
    platform.usage().catch_up().await?;
    Ok(metering)
}

fn metering(platform: &Platform) -> Result<&Arc<Metering>, ApiError> {
    platform.usage().metering().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "metering_off",
            "this server runs with metering off ([metering] enabled = false in its config): it keeps no usage",
        )
    })
}

/// The tenant a request is about: the caller's own, or with an admin key
/// any tenant named by `?tenant=`.
pub(crate) fn tenant<'a>(caller: &'a Caller, asked: Option<&'a str>) -> Result<&'a str, ApiError> {
    match asked {
        None => Ok(&caller.tenant),
        Some(t) if t == &*caller.tenant || caller.admin => Ok(t),
        Some(_) => Err(PlatformError::Forbidden(
            "only an admin key may act for another tenant (its usage, bill, budget or secrets)"
                .into(),
        )
        .into()),
    }
}

/// An instant: `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
fn instant(text: &str, name: &str) -> Result<u64, ApiError> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                format!("{name}={text:?} is not a date: use YYYY-MM-DD or 2026-11-27T10:00:00Z"),
            )
        })
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// `YYYY-MM-DD` or RFC 3339 (default: the start of this month).
    from: Option<String>,
    /// `YYYY-MM-DD` or RFC 3339, exclusive (default: the end of this hour).
    to: Option<String>,
    /// `function` (default) or `hour`.
    group_by: Option<String>,
    /// Another tenant (admin keys only).
    tenant: Option<String>,
}

impl UsageQuery {
    fn window(&self, now: u64) -> Result<(u64, u64), ApiError> {
        window(self.from.as_deref(), self.to.as_deref(), now)
    }
}

/// `[from, to)`: by default from the start of this month to the end of
/// this hour.
fn window(from: Option<&str>, to: Option<&str>, now: u64) -> Result<(u64, u64), ApiError> {
    let from = match from {
        Some(text) => instant(text, "from")?,
        None => month_range(&month_of(now)).map_err(PlatformError::from)?.0,
    };
    let to = match to {
        Some(text) => instant(text, "to")?,
        None => now - now % HOUR_MS + HOUR_MS,
    };
    if to <= from {
        return Err(ApiError::bad_request(
            "bad_request",
            "`to` must be after `from`",
        ));
    }
    Ok((from, to))
}

/// `GET /v1/usage`.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageReport {
    /// RFC 3339, seconds.
    from: String,
    /// `function` or `hour`.
    group_by: &'static str,
    rows: Vec<UsageRow>,
    tenant: String,
    /// RFC 3339, seconds (exclusive).
    to: String,
    total: Aggregate,
    total_cost_cents: u64,
}

/// One row of a usage report: the sums of one function or hour.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageRow {
    cost_cents: u64,
    /// The function, or the hour (RFC 3339) when grouped by hour.
    key: String,
    #[serde(flatten)]
    sums: Aggregate,
}

/// Usage sums and their cost, by default this month by function.
#[utoipa::path(
    get,
    path = "/usage",
    operation_id = "getUsage",
    tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "The usage report", body = UsageReport),
        (status = 400, description = "`bad_request`: a bad date or `group_by`", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn usage(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<SortedJson<UsageReport>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let group_by = match query.group_by.as_deref() {
        None | Some("function") => GroupBy::Function,
        Some("hour") => GroupBy::Hour,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("group_by={other:?}: use function or hour"),
            ));
        }
    };
    let metering = metering_now(&platform).await?;
    let (from, to) = query.window(metering.now_ms())?;
    let (rows, total) = tokio::task::block_in_place(|| metering.usage(tenant, from, to, group_by))
        .map_err(PlatformError::from)?;
    let rows = rows
        .into_iter()
        .map(|row| UsageRow {
            cost_cents: row.cost_cents,
            key: row.key,
            sums: row.sums,
        })
        .collect();
    let total_cents = updraft_metering::prices::bill(metering.prices(), &total).total_cents;
    Ok(SortedJson(UsageReport {
        from: rfc3339(from),
        group_by: if group_by == GroupBy::Hour {
            "hour"
        } else {
            "function"
        },
        rows,
        tenant: tenant.to_string(),
        to: rfc3339(to),
        total,
        total_cost_cents: total_cents,
    }))
}

/// Records of one page unless `limit` asks for fewer or more.
const RECORDS_PAGE_DEFAULT: usize = 10_000;
const RECORDS_PAGE_MAX: usize = 100_000;
/// The header carrying the cursor of the next page of records.
const NEXT_CURSOR: &str = "updraft-next-cursor";

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordsQuery {
    /// `YYYY-MM-DD` or RFC 3339 (default: the start of this month).
    from: Option<String>,
    /// `YYYY-MM-DD` or RFC 3339, exclusive (default: the end of this hour).
    to: Option<String>,
    /// Another tenant (admin keys only).
    tenant: Option<String>,
    /// Records a page (default 10,000, at most 100,000).
    limit: Option<usize>,
    /// The previous page's `Updraft-Next-Cursor`.
    cursor: Option<String>,
}

/// The raw usage records, NDJSON, a page at a time.
///
/// `GET /v1/usage/records?from&to&limit&cursor`: the raw records in start
/// order, NDJSON, a page at a time; `Updraft-Next-Cursor` is set when
/// more follow.
#[utoipa::path(
    get,
    path = "/usage/records",
    operation_id = "listUsageRecords",
    tag = "usage",
    params(RecordsQuery),
    responses(
        (status = 200, description = "Usage records and storage samples, one JSON object a line",
            body = UsageRecord, content_type = "application/x-ndjson",
            headers(("updraft-next-cursor" = String, description = "Set when more records follow: pass it as `cursor`"))),
        (status = 400, description = "`bad_request`, `invalid_cursor`", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn records(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<RecordsQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let metering = metering_now(&platform).await?;
    let (from, to) = window(
        query.from.as_deref(),
        query.to.as_deref(),
        metering.now_ms(),
    )?;
    let limit = query.limit.unwrap_or(RECORDS_PAGE_DEFAULT);
    if !(1..=RECORDS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("limit={limit}: ask for 1 to {RECORDS_PAGE_MAX} records a page"),
        ));
    }
    let (page, next) = tokio::task::block_in_place(|| {
        metering.records_page(tenant, from, to, query.cursor.as_deref(), limit)
    })
    .map_err(PlatformError::from)?;
    let mut out = Vec::new();
    for record in &page {
        if let Ok(line) = serde_json::to_vec(record) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(Bytes::from(out)),
    )
        .into_response();
    if let Some(next) = next.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(NEXT_CURSOR, next);
    }
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct BillQuery {
    /// `YYYY-MM` (default: this month).
    month: Option<String>,
    /// Another tenant (admin keys only).
    tenant: Option<String>,
    /// `records`: recompute from every raw record instead of the hourly sums.
    source: Option<String>,
}

/// `GET /v1/bill`.
#[derive(Serialize, ToSchema)]
pub(crate) struct BillReport {
    lines: Vec<BillLine>,
    /// `YYYY-MM`.
    month: String,
    prices: PriceSheet,
    tenant: String,
    total_cents: u64,
    usage: Aggregate,
}

/// The month's bill.
#[utoipa::path(
    get,
    path = "/bill",
    operation_id = "getBill",
    tag = "usage",
    params(BillQuery),
    responses(
        (status = 200, description = "The bill", body = BillReport),
        (status = 400, description = "`bad_request`: a bad month", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn bill(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<BillQuery>,
) -> Result<SortedJson<BillReport>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let metering = metering_now(&platform).await?;
    let month = query.month.unwrap_or_else(|| month_of(metering.now_ms()));
    let (bill, sums) = tokio::task::block_in_place(|| match query.source.as_deref() {
        Some("records") => metering.bill_from_records(tenant, &month),
        _ => metering.bill(tenant, &month),
    })
    .map_err(PlatformError::from)?;
    Ok(SortedJson(BillReport {
        lines: bill.lines,
        month,
        prices: *metering.prices(),
        tenant: tenant.to_string(),
        total_cents: bill.total_cents,
        usage: sums,
    }))
}

/// The price sheet, in US dollars.
#[utoipa::path(
    get,
    path = "/prices",
    operation_id = "getPrices",
    tag = "usage",
    responses(
        (status = 200, description = "The prices", body = PriceSheet),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn prices(State(platform): Shared) -> Result<SortedJson<PriceSheet>, ApiError> {
    Ok(SortedJson(*metering(&platform)?.prices()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TenantQuery {
    /// Another tenant (admin keys only).
    pub(crate) tenant: Option<String>,
}

/// The monthly budget and what is spent of it.
#[utoipa::path(
    get,
    path = "/budget",
    operation_id = "getBudget",
    tag = "usage",
    params(TenantQuery),
    responses(
        (status = 200, description = "The budget", body = BudgetStatus),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<SortedJson<BudgetStatus>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(SortedJson(
        metering_now(&platform).await?.budget_status(tenant),
    ))
}

/// Body of `PUT /v1/budget`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetBudget {
    /// Dollars a month, 0 to 1,000,000,000.
    monthly_usd: f64,
}

/// Set the monthly budget: past it, invocations are refused (402).
#[utoipa::path(
    put,
    path = "/budget",
    operation_id = "setBudget",
    tag = "usage",
    params(TenantQuery),
    request_body = SetBudget,
    responses(
        (status = 200, description = "The budget", body = BudgetStatus),
        (status = 400, description = "`bad_request`: not such JSON, or out of range", body = ErrorBody),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn set_budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
    body: Bytes,
) -> Result<SortedJson<BudgetStatus>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let body: SetBudget = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!("the body must be JSON like {{\"monthly_usd\": 25}}: {e}"),
        )
    })?;
    if !body.monthly_usd.is_finite() || body.monthly_usd < 0.0 || body.monthly_usd > BUDGET_USD_MAX
    {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "monthly_usd = {}: use an amount in dollars from 0 to {BUDGET_USD_MAX}",
                body.monthly_usd
            ),
        ));
    }
    let cents = (body.monthly_usd * 100.0).round() as u64;
    let metering = metering(&platform)?;
    platform.usage().set_budget(tenant, Some(cents)).await?;
    Ok(SortedJson(metering.budget_status(tenant)))
}

/// `GET /v1/quota`: the tenant's quota (`{}`: none).
#[utoipa::path(
    get,
    path = "/quota",
    operation_id = "getQuota",
    tag = "usage",
    params(TenantQuery),
    responses(
        (status = 200, description = "The quota; a kind left out has no limit", body = TenantQuota),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
    ),
)]
pub(crate) async fn quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<SortedJson<TenantQuota>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(SortedJson(platform.quota(tenant).await?))
}

/// Set a tenant's quota (admin keys only).
///
/// `PUT /v1/quota?tenant=T` with `{"max_concurrency": 10,
/// "requests_per_second": 100}` (either may be left out: no limit of that
/// kind); admin keys only.
#[utoipa::path(
    put,
    path = "/quota",
    operation_id = "setQuota",
    tag = "usage",
    params(TenantQuery),
    request_body = TenantQuota,
    responses(
        (status = 200, description = "The quota set", body = TenantQuota),
        (status = 400, description = "`bad_request`: not such JSON, or out of range", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
    ),
)]
pub(crate) async fn set_quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
    body: Bytes,
) -> Result<SortedJson<TenantQuota>, ApiError> {
    let tenant = quota_tenant(&caller, query.tenant.as_deref())?;
    let quota: TenantQuota = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "the body must be JSON like {{\"max_concurrency\": 10, \"requests_per_second\": 100}}: {e}"
            ),
        )
    })?;
    platform.set_quota(tenant, quota).await?;
    Ok(SortedJson(quota))
}

/// `DELETE /v1/quota?tenant=T`: no limits; admin keys only. Answers the
/// empty quota, `{}`.
#[utoipa::path(
    delete,
    path = "/quota",
    operation_id = "clearQuota",
    tag = "usage",
    params(TenantQuery),
    responses(
        (status = 200, description = "No quota: `{}`", body = TenantQuota),
        (status = 403, description = "`forbidden`: not an admin key", body = ErrorBody),
    ),
)]
pub(crate) async fn clear_quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<SortedJson<TenantQuota>, ApiError> {
    let tenant = quota_tenant(&caller, query.tenant.as_deref())?;
    let none = TenantQuota::default();
    platform.set_quota(tenant, none).await?;
    // Every field of an empty quota is left out: this is `{}`.
    Ok(SortedJson(none))
}

/// Quotas bound tenants, so only an admin sets them (for any tenant).
fn quota_tenant<'a>(caller: &'a Caller, asked: Option<&'a str>) -> Result<&'a str, ApiError> {
    if !caller.admin {
        return Err(
            PlatformError::Forbidden("only an admin key may set a tenant's quota".into()).into(),
        );
    }
    Ok(asked.unwrap_or(&caller.tenant))
}

/// `DELETE /v1/budget`: no cap.
#[utoipa::path(
    delete,
    path = "/budget",
    operation_id = "clearBudget",
    tag = "usage",
    params(TenantQuery),
    responses(
        (status = 200, description = "The budget, now none", body = BudgetStatus),
        (status = 403, description = "`forbidden`: another tenant without an admin key", body = ErrorBody),
        (status = 409, description = "`metering_off`", body = ErrorBody),
    ),
)]
pub(crate) async fn clear_budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<SortedJson<BudgetStatus>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let metering = metering(&platform)?;
    platform.usage().set_budget(tenant, None).await?;
    Ok(SortedJson(metering.budget_status(tenant)))
}
