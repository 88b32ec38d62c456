//! `updraft invoke --async`, `updraft invocation`, `updraft dlq` and
//! `updraft queues`: async invocations after they are accepted.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

use crate::cli::{DlqCommand, InvokeArgs};
use crate::client::Client;
use crate::output;

/// Prints the id of a queued call on stdout (alone, for scripts).
pub async fn invoke_async(client: &Client, args: &InvokeArgs, body: Vec<u8>) -> Result<()> {
    let reply = client
        .invoke_async(
            &args.name,
            body,
            &args.headers,
            args.idempotency_key.as_deref(),
        )
        .await?;
    let id = reply.body["id"].as_str().unwrap_or_default();
    println!("{id}");
    if args.verbose {
        if reply.body["duplicate"] == true {
            eprintln!("already accepted under this idempotency key: the first call's id");
        }
        eprintln!("queued; follow it with `updraft invocation {id}`");
    }
    Ok(())
}

fn time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

pub async fn invocation(client: &Client, id: &str, json: bool) -> Result<()> {
    let reply = client.get_value(&["v1", "invocations", id], &[]).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    writeln!(out, "id:        {}", v["id"].as_str().unwrap_or_default())?;
    writeln!(
        out,
        "function:  {}",
        v["function"].as_str().unwrap_or_default()
    )?;
    writeln!(
        out,
        "status:    {}",
        v["status"].as_str().unwrap_or_default()
    )?;
    writeln!(out, "attempts:  {}", v["attempts"].as_u64().unwrap_or(0))?;
    writeln!(out, "queued:    {}", time(&v["enqueued_ms"]))?;
    for (label, field) in [
        ("started:  ", "started_ms"),
        ("finished: ", "finished_ms"),
        ("next try: ", "next_attempt_ms"),
    ] {
        if v[field].is_u64() {
            writeln!(out, "{label} {}", time(&v[field]))?;
        }
    }
    if let Some(error) = v["error"].as_str() {
        writeln!(out, "error:     {error}")?;
    }
    if let Some(result) = v["result"].as_object() {
        writeln!(out, "result:    HTTP {}", result["status"])?;
        let body = result["body"].as_str().unwrap_or_default();
        out.write_all(body.as_bytes())?;
        if !body.is_empty() && !body.ends_with('\n') {
            writeln!(out)?;
        }
        if result["body_truncated"] == true {
            writeln!(out, "(body truncated)")?;
        }
    }
    Ok(())
}

pub async fn dlq(client: &Client, command: DlqCommand, json: bool) -> Result<()> {
    let reply = match &command {
        DlqCommand::Ls => client.get_value(&["v1", "queues"], &[]).await?,
        DlqCommand::Show { name } => {
            client
                .get_value(&["v1", "functions", name, "dlq"], &[])
                .await?
        }
        DlqCommand::Redrive { name } => {
            client
                .post_value(&["v1", "functions", name, "dlq", "redrive"])
                .await?
        }
    };
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    match command {
        DlqCommand::Ls => {
            let rows = functions(v)
                .filter(|f| f["dead_letters"].as_u64().unwrap_or(0) > 0)
                .map(|f| {
                    vec![
                        f["function"].as_str().unwrap_or_default().to_string(),
                        f["dead_letters"].to_string(),
                    ]
                })
                .collect();
            output::write_table(&mut out, &["FUNCTION", "DEAD LETTERS"], rows)?;
        }
        DlqCommand::Show { .. } => {
            let rows = v["dead_letters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    vec![
                        d["id"].as_str().unwrap_or_default().to_string(),
                        d["attempts"].to_string(),
                        time(&d["enqueued_ms"]),
                        d["error"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            output::write_table(&mut out, &["ID", "ATTEMPTS", "QUEUED", "LAST ERROR"], rows)?;
        }
        DlqCommand::Redrive { name } => {
            writeln!(
                out,
                "{} dead letters of {name} queued again",
                v["redriven"].as_u64().unwrap_or(0)
            )?;
        }
    }
    Ok(())
}

fn functions(v: &Value) -> impl Iterator<Item = &Value> {
    v["functions"].as_array().into_iter().flatten()
}

pub async fn queues(client: &Client, json: bool) -> Result<()> {
    let reply = client.get_value(&["v1", "queues"], &[]).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let rows = functions(&reply.body)
        .map(|f| {
            let oldest = match f["oldest_age_ms"].as_u64() {
                Some(ms) => output::format_duration(Duration::from_millis(ms)),
                None => "-".into(),
            };
            vec![
                f["function"].as_str().unwrap_or_default().to_string(),
                f["depth"].to_string(),
                f["in_flight"].to_string(),
                oldest,
                f["dead_letters"].to_string(),
            ]
        })
        .collect();
    output::write_table(
        &mut out,
        &["FUNCTION", "DEPTH", "IN FLIGHT", "OLDEST", "DEAD LETTERS"],
        rows,
    )?;
    Ok(())
}
