//! Usage, bills, prices and budgets of the caller's tenant (an admin key
//! may name another with `?tenant=`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use updraft_metering::{Aggregate, GroupBy, HOUR_MS, Metering, month_of, month_range};
use updraft_scheduler::{Caller, Platform, PlatformError};

use crate::error::{ApiError, Query};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
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

fn sums_json(sums: &Aggregate) -> Value {
    serde_json::to_value(sums).unwrap_or_default()
}

/// `GET /v1/usage?from&to&group_by=function|hour`.
pub(crate) async fn usage(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut v = sums_json(&row.sums);
            if let Value::Object(map) = &mut v {
                map.insert("key".into(), json!(row.key));
                map.insert("cost_cents".into(), json!(row.cost_cents));
            }
            v
        })
        .collect();
    let total_cents = updraft_metering::prices::bill(metering.prices(), &total).total_cents;
    Ok(Json(json!({
        "tenant": tenant,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "group_by": if group_by == GroupBy::Hour { "hour" } else { "function" },
        "rows": rows,
        "total": sums_json(&total),
        "total_cost_cents": total_cents,
    })))
}

/// Records of one page unless `limit` asks for fewer or more.
const RECORDS_PAGE_DEFAULT: usize = 10_000;
const RECORDS_PAGE_MAX: usize = 100_000;
/// The header carrying the cursor of the next page of records.
const NEXT_CURSOR: &str = "updraft-next-cursor";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordsQuery {
    from: Option<String>,
    to: Option<String>,
    tenant: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/usage/records?from&to&limit&cursor`: the raw records in start
/// order, NDJSON, a page at a time; `Updraft-Next-Cursor` is set when
/// more follow.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillQuery {
    month: Option<String>,
    tenant: Option<String>,
    /// `records`: recompute from every raw record instead of the hourly sums.
    source: Option<String>,
}

/// `GET /v1/bill?month=YYYY-MM`.
pub(crate) async fn bill(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<BillQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let metering = metering_now(&platform).await?;
    let month = query.month.unwrap_or_else(|| month_of(metering.now_ms()));
    let (bill, sums) = tokio::task::block_in_place(|| match query.source.as_deref() {
        Some("records") => metering.bill_from_records(tenant, &month),
        _ => metering.bill(tenant, &month),
    })
    .map_err(PlatformError::from)?;
    Ok(Json(json!({
        "tenant": tenant,
        "month": month,
        "lines": bill.lines,
        "total_cents": bill.total_cents,
        "usage": sums_json(&sums),
        "prices": metering.prices(),
    })))
}

/// `GET /v1/prices`.
pub(crate) async fn prices(State(platform): Shared) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(metering(&platform)?.prices())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantQuery {
    pub(crate) tenant: Option<String>,
}

/// `GET /v1/budget`.
pub(crate) async fn budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(Json(json!(
        metering_now(&platform).await?.budget_status(tenant)
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetBudget {
    monthly_usd: f64,
}

/// `PUT /v1/budget` with `{"monthly_usd": 25}`.
pub(crate) async fn set_budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!(metering.budget_status(tenant))))
}

/// `GET /v1/quota`: the tenant's quota (`{}`: none).
pub(crate) async fn quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    Ok(Json(json!(platform.quota(tenant).await?)))
}

/// `PUT /v1/quota?tenant=T` with `{"max_concurrency": 10,
/// "requests_per_second": 100}` (either may be left out: no limit of that
/// kind); admin keys only.
pub(crate) async fn set_quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = quota_tenant(&caller, query.tenant.as_deref())?;
    let quota: updraft_scheduler::TenantQuota = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "the body must be JSON like {{\"max_concurrency\": 10, \"requests_per_second\": 100}}: {e}"
            ),
        )
    })?;
    platform.set_quota(tenant, quota).await?;
    Ok(Json(json!(quota)))
}

/// `DELETE /v1/quota?tenant=T`: no limits; admin keys only.
pub(crate) async fn clear_quota(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = quota_tenant(&caller, query.tenant.as_deref())?;
    platform
        .set_quota(tenant, updraft_scheduler::TenantQuota::default())
        .await?;
    Ok(Json(json!({})))
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
pub(crate) async fn clear_budget(
    State(platform): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(&caller, query.tenant.as_deref())?;
    let metering = metering(&platform)?;
    platform.usage().set_budget(tenant, None).await?;
    Ok(Json(json!(metering.budget_status(tenant))))
}
