//! `updraft invoke --async`, `updraft invocation`, `updraft dlq` and
//! `updraft queues`: async invocations after they are accepted.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

use crate::cli::{DlqCommand, InvokeArgs, PublishArgs, QueuesCommand, TopicsCommand};
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

/// `840 µs`, `12.3 ms`, `4.56 s`.
fn duration_us(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros} µs"),
        1_000..1_000_000 => format!("{:.1} ms", micros as f64 / 1e3),
        _ => format!("{:.2} s", micros as f64 / 1e6),
    }
}

/// `updraft trace ID`: the spans as a tree, each with its duration.
pub async fn trace(client: &Client, id: &str, json: bool) -> Result<()> {
    let reply = client.get_value(&["v1", "traces", id], &[]).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let spans = reply.body["spans"].as_array().cloned().unwrap_or_default();
    writeln!(
        out,
        "trace {}",
        reply.body["trace_id"].as_str().unwrap_or_default()
    )?;
    let text =
        |span: &serde_json::Value, key: &str| span[key].as_str().unwrap_or_default().to_string();
    let ids: std::collections::HashSet<String> = spans.iter().map(|s| text(s, "span_id")).collect();
    // Roots: spans whose parent is not here (the client's, or none).
    let mut stack: Vec<(usize, &serde_json::Value)> = spans
        .iter()
        .filter(|s| !ids.contains(&text(s, "parent_span_id")))
        .rev()
        .map(|s| (0, s))
        .collect();
    while let Some((depth, span)) = stack.pop() {
        let micros = span["duration_us"].as_u64().unwrap_or(0);
        let status = text(span, "status");
        let attributes = &span["attributes"];
        let mut notes = Vec::new();
        for key in ["faas.invocation_id", "messaging.message.id"] {
            if let Some(v) = attributes[key].as_str() {
                notes.push(v.to_string());
            }
        }
        if status != "ok" {
            notes.push(status);
        }
        writeln!(
            out,
            "{:indent$}{} [{}] {}{}",
            "",
            text(span, "name"),
            text(span, "kind"),
            duration_us(micros),
            if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            },
            indent = depth * 2
        )?;
        let me = text(span, "span_id");
        let children = spans
            .iter()
            .filter(|s| s["parent_span_id"].as_str() == Some(me.as_str()))
            .rev();
        stack.extend(children.map(|c| (depth + 1, c)));
    }
    Ok(())
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

pub async fn queues(client: &Client, command: Option<QueuesCommand>, json: bool) -> Result<()> {
    let reply = match command.unwrap_or(QueuesCommand::Ls) {
        QueuesCommand::Ls => client.get_value(&["v1", "queues"], &[]).await?,
        QueuesCommand::Create {
            name,
            visibility_timeout_ms,
            batch_size,
        } => {
            let body = serde_json::json!({
                "visibility_timeout_ms": visibility_timeout_ms,
                "batch_size": batch_size,
            });
            let reply = client
                .send_value(&["v1", "queues", &name], Some(body))
                .await?;
            return done(&reply.raw, json, &format!("queue {name} ready"));
        }
        QueuesCommand::Rm { name } => {
            let reply = client.send_value(&["v1", "queues", &name], None).await?;
            return done(&reply.raw, json, &format!("queue {name} removed"));
        }
    };
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    let v = &reply.body;
    let list = |value: &Value| -> String {
        let names: Vec<&str> = value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    };
    let named: Vec<Vec<String>> = v["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            vec![
                q["name"].as_str().unwrap_or_default().to_string(),
                q["depth"].to_string(),
                q["in_flight"].to_string(),
                age(&q["oldest_age_ms"]),
                list(&q["consumers"]),
            ]
        })
        .collect();
    if !named.is_empty() {
        output::write_table(
            &mut out,
            &["QUEUE", "DEPTH", "IN FLIGHT", "OLDEST", "CONSUMERS"],
            named,
        )?;
    }
    let topics: Vec<Vec<String>> = v["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                t["name"].as_str().unwrap_or_default().to_string(),
                list(&t["subscribers"]),
            ]
        })
        .collect();
    if !topics.is_empty() {
        output::write_table(&mut out, &["TOPIC", "SUBSCRIBERS"], topics)?;
    }
    let rows = functions(&reply.body)
        .map(|f| {
            vec![
                f["function"].as_str().unwrap_or_default().to_string(),
                f["depth"].to_string(),
                f["in_flight"].to_string(),
                age(&f["oldest_age_ms"]),
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

fn age(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => output::format_duration(Duration::from_millis(ms)),
        None => "-".into(),
    }
}

/// Prints `message`, or the reply with `--json`.
fn done(raw: &Value, json: bool, message: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    if json {
        output::write_json(&mut out, raw)?;
    } else {
        writeln!(out, "{message}")?;
    }
    Ok(())
}

pub async fn topics(client: &Client, command: TopicsCommand, json: bool) -> Result<()> {
    match command {
        TopicsCommand::Create { name } => {
            let reply = client
                .send_value(&["v1", "topics", &name], Some(serde_json::json!({})))
                .await?;
            done(&reply.raw, json, &format!("topic {name} ready"))
        }
        TopicsCommand::Rm { name } => {
            let reply = client.send_value(&["v1", "topics", &name], None).await?;
            done(&reply.raw, json, &format!("topic {name} removed"))
        }
    }
}

/// Prints the message ids, one per line (a topic: one per subscriber).
pub async fn publish(client: &Client, args: &PublishArgs, json: bool) -> Result<()> {
    let body = match &args.data {
        Some(source) => source.read()?,
        None => Vec::new(),
    };
    let content_type = if args.cloudevent {
        Some("application/cloudevents+json")
    } else {
        args.content_type.as_deref()
    };
    let reply = client.publish(&args.name, body, content_type).await?;
    let mut out = io::stdout().lock();
    if json {
        return Ok(output::write_json(&mut out, &reply.raw)?);
    }
    for id in reply.body["ids"].as_array().into_iter().flatten() {
        writeln!(out, "{}", id.as_str().unwrap_or_default())?;
    }
    Ok(())
}
