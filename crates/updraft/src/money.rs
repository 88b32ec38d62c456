//! `updraft usage`, `bill`, `budget` and `cost estimate`: the tenant's
//! usage and what it costs, printed as tables (or `--json`).

use std::io::{self, Write};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use updraft_metering::{HOUR_MS, Load, PriceSheet, estimate, usd as dollars};

use crate::cli::{BudgetCommand, CostCommand, EstimateArgs, QuotaCommand};
use crate::client::Client;
use crate::output::{self, format_bytes};

/// The query pairs of the options that are set.
fn present<'a>(options: &[(&'a str, &'a Option<String>)]) -> Vec<(&'a str, &'a str)> {
    options
        .iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)))
        .collect()
}

fn u(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

pub async fn usage(
    client: &Client,
    from: Option<String>,
    to: Option<String>,
    by: &str,
    tenant: Option<String>,
    json: bool,
) -> Result<()> {
    let mut query = present(&[("from", &from), ("to", &to), ("tenant", &tenant)]);
    query.push(("group_by", by));
    let reply = client.get_value(&["v1", "usage"], &query).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    writeln!(
        out,
        "tenant {} from {} to {}",
        v["tenant"].as_str().unwrap_or_default(),
        v["from"].as_str().unwrap_or_default(),
        v["to"].as_str().unwrap_or_default()
    )?;
    let key = if by == "hour" { "HOUR" } else { "FUNCTION" };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let empty = Vec::new();
    let mut all: Vec<(&str, &Value)> = v["rows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| (r["key"].as_str().unwrap_or_default(), r))
        .collect();
    all.push(("total", &v["total"]));
    for (name, r) in all {
        let cost = if name == "total" {
            u(v, "total_cost_cents")
        } else {
            u(r, "cost_cents")
        };
        rows.push(vec![
            name.to_string(),
            u(r, "invocations").to_string(),
            u(r, "failures").to_string(),
            u(r, "billed_ms").to_string(),
            format!("{:.3}", u(r, "mb_ms") as f64 / 1_024_000.0),
            format!("{:.1}", u(r, "cpu_us") as f64 / 1000.0),
            format_bytes(u(r, "bytes_in")),
            format_bytes(u(r, "bytes_out")),
            u(r, "kv_ops").to_string(),
            u(r, "blob_ops").to_string(),
            format!(
                "{:.4}",
                (u(r, "kv_byte_hours") + u(r, "blob_byte_hours")) as f64
                    / (f64::from(1u32 << 30) * updraft_metering::prices::HOURS_PER_MONTH)
            ),
            dollars(cost),
        ]);
    }
    output::write_table(
        &mut out,
        &[
            key,
            "CALLS",
            "FAILED",
            "BILLED_MS",
            "GB_S",
            "CPU_MS",
            "IN",
            "OUT",
            "KV_OPS",
            "BLOB_OPS",
            "STORED_GB_MO",
            "COST",
        ],
        rows,
    )?;
    Ok(())
}

pub async fn bill(
    client: &Client,
    month: Option<String>,
    tenant: Option<String>,
    json: bool,
) -> Result<()> {
    let query = present(&[("month", &month), ("tenant", &tenant)]);
    let reply = client.get_value(&["v1", "bill"], &query).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    writeln!(
        out,
        "bill of tenant {} for {}",
        v["tenant"].as_str().unwrap_or_default(),
        v["month"].as_str().unwrap_or_default()
    )?;
    let empty = Vec::new();
    let rows = v["lines"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|l| {
            vec![
                l["item"].as_str().unwrap_or_default().to_string(),
                l["quantity"].as_str().unwrap_or_default().to_string(),
                format!(
                    "${} {}",
                    l["unit_price_usd"].as_f64().unwrap_or(0.0),
                    l["unit"].as_str().unwrap_or_default()
                ),
                dollars(u(l, "amount_cents")),
            ]
        })
        .collect();
    output::write_table(&mut out, &["ITEM", "QUANTITY", "PRICE", "AMOUNT"], rows)?;
    writeln!(out, "total {}", dollars(u(v, "total_cents")))?;
    Ok(())
}

pub async fn budget(client: &Client, command: BudgetCommand, json: bool) -> Result<()> {
    let reply = match command {
        BudgetCommand::Show => client.get_value(&["v1", "budget"], &[]).await?,
        BudgetCommand::Set { usd } => {
            client
                .send_value(&["v1", "budget"], Some(json!({ "monthly_usd": usd })))
                .await?
        }
        BudgetCommand::Clear => client.send_value(&["v1", "budget"], None).await?,
    };
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    let spent = dollars(u(v, "spent_cents"));
    match v["budget_cents"].as_u64() {
        None => writeln!(
            out,
            "no budget; spent {spent} in {}",
            v["month"].as_str().unwrap_or_default()
        )?,
        Some(budget) => writeln!(
            out,
            "budget {} a month; spent {spent} in {}{}",
            dollars(budget),
            v["month"].as_str().unwrap_or_default(),
            if v["exceeded"] == true {
                " — spent: new invocations are refused (402)"
            } else if v["warned"] == true {
                " — over 80%"
            } else {
                ""
            }
        )?,
    }
    Ok(())
}

pub async fn quota(client: &Client, command: QuotaCommand, json: bool) -> Result<()> {
    let path = ["v1", "quota"];
    let (QuotaCommand::Show { tenant }
    | QuotaCommand::Set { tenant, .. }
    | QuotaCommand::Rm { tenant }) = &command;
    let query: Vec<(&str, &str)> = tenant
        .as_deref()
        .map(|t| ("tenant", t))
        .into_iter()
        .collect();
    let reply = match &command {
        QuotaCommand::Show { .. } => client.get_value(&path, &query).await?,
        QuotaCommand::Set {
            concurrency,
            rps,
            memory_mb,
            disk_mb,
            ..
        } => {
            let body = json!({
                "max_concurrency": concurrency,
                "requests_per_second": rps,
                "memory_mb": memory_mb,
                "disk_mb": disk_mb,
            });
            client.send_value_with(&path, &query, Some(body)).await?
        }
        QuotaCommand::Rm { .. } => client.send_value_with(&path, &query, None).await?,
    };
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    let limit = |field: &str, unit: &str| match v[field].as_u64() {
        Some(n) => format!("{n} {unit}"),
        None => format!("no limit of {unit}"),
    };
    writeln!(
        out,
        "{}; {}; {} (per node); {}",
        limit("max_concurrency", "invocations at once"),
        limit("requests_per_second", "invocations a second"),
        limit("memory_mb", "MiB of memory"),
        limit("disk_mb", "MiB stored")
    )?;
    Ok(())
}

pub async fn cost(client: &Client, command: CostCommand, json: bool) -> Result<()> {
    let CostCommand::Estimate(args) = command;
    let prices: PriceSheet =
        serde_json::from_value(client.get_value(&["v1", "prices"], &[]).await?.body)
            .context("the server's price sheet was not understood")?;
    let load = match args.from_usage {
        Some(days) => from_usage(client, days, &args).await?,
        None => Load {
            rps: args.rps.unwrap_or(0.0),
            duration_ms: args.duration_ms,
            memory_mb: args.memory_mb,
            kv_ops: args.kv_ops,
            bytes_out: args.bytes_out,
            kv_stored_gb: args.kv_stored_gb,
            blob_stored_gb: args.blob_stored_gb,
        },
    };
    let e = estimate(&prices, &load, Some(args.server_usd_per_hour));
    let mut out = io::stdout().lock();
    if json {
        let mut v = json!(e);
        v["load"] = json!(load);
        return Ok(output::write_json(&mut out, &v)?);
    }
    writeln!(
        out,
        "{:.2} req/s of {:.1} ms at {} MB ({:.1} kv ops, {} out each):",
        load.rps,
        load.duration_ms,
        load.memory_mb,
        load.kv_ops,
        format_bytes(load.bytes_out as u64)
    )?;
    if e.storage_monthly_usd > 0.0 {
        writeln!(
            out,
            "  {:.3} GiB of key-value data and {:.3} GiB of blobs cost ${:.2} a month",
            load.kv_stored_gb, load.blob_stored_gb, e.storage_monthly_usd
        )?;
    }
    writeln!(
        out,
        "  {} requests a month cost ${:.2} in all (${:.9} each)",
        e.requests_per_month, e.monthly_usd, e.per_request_usd
    )?;
    if let (Some(server), Some(rps)) = (e.server_monthly_usd, e.break_even_rps) {
        writeln!(
            out,
            "  a reserved server at ${}/h costs ${server:.2} a month: cheaper above {rps:.1} req/s{}",
            args.server_usd_per_hour,
            if load.rps > rps {
                " (this load is above it)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// The average invocation of the last `days` days, and their rate.
async fn from_usage(client: &Client, days: u32, args: &EstimateArgs) -> Result<Load> {
    let now = updraft_core::Clock::now_ms(&updraft_core::SystemClock);
    let from = now.saturating_sub(u64::from(days) * 86_400_000);
    let from = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(from),
    )
    .to_string();
    let reply = client
        .get_value(&["v1", "usage"], &[("from", from.as_str())])
        .await?;
    let total = &reply.body["total"];
    let calls = u(total, "invocations");
    if calls == 0 {
        anyhow::bail!(
            "no invocations in the last {days} days to estimate from: pass --rps instead"
        );
    }
    let per = |field: &str| u(total, field) as f64 / calls as f64;
    let billed = u(total, "billed_ms").max(1);
    // Byte-hours over the window's hours: the average GiB stored.
    let hours = (u64::from(days) * 86_400_000 / HOUR_MS) as f64;
    let gib = |field: &str| u(total, field) as f64 / hours / f64::from(1u32 << 30);
    Ok(Load {
        rps: calls as f64 / (f64::from(days) * 86_400.0),
        duration_ms: per("billed_ms"),
        // Memory falls back to the flag when the records have none.
        memory_mb: match (u(total, "mb_ms") / billed) as u32 {
            0 => args.memory_mb,
            mb => mb,
        },
        kv_ops: per("kv_ops"),
        bytes_out: per("bytes_out"),
        kv_stored_gb: gib("kv_byte_hours"),
        blob_stored_gb: gib("blob_byte_hours"),
    })
}
