//! The text forms of `percore ctl`'s answers: aligned tables, durations in
//! the unit that reads best, and a bar chart of a latency distribution.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Width of the longest bar in the distribution chart.
const BAR_WIDTH: u64 = 40;

/// `percore ctl status`: the pool, then a table of backends.
pub fn status(status: &Value, latency: &Value) -> String {
    let workers = status["workers"].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "strategy {}, pool version {}, {} worker cores, up {}\n\n",
        plain(&status["strategy"]),
        status["version"],
        workers,
        seconds(status["uptime_s"].as_f64().unwrap_or(0.0)),
    );
    let headers = [
        "ID",
        "BACKEND",
        "STATE",
        "WEIGHT",
        "IN FLIGHT",
        "REQUESTS",
        "FAILURES",
        "P50 10s",
        "P99 10s",
        "LAST CHECK",
    ];
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rows = status["backends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|backend| {
            let url = backend["url"].as_str().unwrap_or_default();
            let window = &latency["backends"][url];
            let percentile = |key: &str| match window["count"].as_u64() {
                Some(count) if count > 0 => micros(window[key].as_u64().unwrap_or(0)),
                _ => "-".to_string(),
            };
            vec![
                backend["id"].to_string(),
                url.to_string(),
                plain(&backend["state"]),
                backend["weight"].to_string(),
                backend["active_connections"].to_string(),
                backend["requests"].to_string(),
                backend["failures"].to_string(),
                percentile("p50"),
                percentile("p99"),
                last_check(&backend["last_check"], now_ms),
            ]
        })
        .collect();
    out.push_str(&table(&headers, rows, "RLLRRRRRRL"));
    out
}

/// `percore ctl histograms`: percentiles per row, then the overall
/// distribution as bars.
pub fn histograms(document: &Value) -> String {
    let mut out = format!(
        "latency over window {} (time at the proxy)\n\n",
        plain(&document["window"])
    );
    let headers = ["", "COUNT", "MEAN", "P50", "P90", "P99", "P99.9", "MAX"];
    let row = |name: &str, summary: &Value| {
        let mut row = vec![name.to_string(), summary["count"].to_string()];
        row.push(micros(
            summary["mean"].as_f64().unwrap_or(0.0).round() as u64
        ));
        for key in ["p50", "p90", "p99", "p999", "max"] {
            row.push(micros(summary[key].as_u64().unwrap_or(0)));
        }
        row
    };
    let mut rows = vec![row("overall", &document["overall"])];
    if let Some(backends) = document["backends"].as_object() {
        rows.extend(backends.iter().map(|(url, summary)| row(url, summary)));
    }
    if let Some(upstream) = document["upstream"]["overall"].as_object() {
        rows.push(row("upstream (all)", &Value::Object(upstream.clone())));
    }
    out.push_str(&table(&headers, rows, "LRRRRRRR"));
    out.push('\n');
    out.push_str(&bars(&document["overall"]["distribution"]));
    out
}

/// One line per bucket: its upper bound, a bar scaled to the fullest
/// bucket, and the count.
fn bars(distribution: &Value) -> String {
    let buckets: Vec<(u64, u64)> = distribution
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|bucket| {
            (
                bucket["le_us"].as_u64().unwrap_or(0),
                bucket["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let Some(fullest) = buckets
        .iter()
        .map(|&(_, count)| count)
        .max()
        .filter(|&n| n > 0)
    else {
        return "no requests in this window\n".to_string();
    };
    let mut out = String::from("distribution (overall)\n");
    for (le_us, count) in buckets {
        // At least one mark for a bucket that holds anything.
        let width = (count * BAR_WIDTH).div_ceil(fullest) as usize;
        out.push_str(&format!(
            "  <= {:>7} |{:<width$}| {count}\n",
            micros(le_us),
            "#".repeat(width),
            width = BAR_WIDTH as usize
        ));
    }
    out
}

/// Columns padded to their widest cell, each aligned as `align` says by
/// position: `L`eft for names, `R`ight for numbers.
fn table(headers: &[&str], rows: Vec<Vec<String>>, align: &str) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index > 0 {
                text.push_str("  ");
            }
            if align.as_bytes().get(index) == Some(&b'L') {
                text.push_str(&format!("{cell:<width$}"));
            } else {
                text.push_str(&format!("{cell:>width$}"));
            }
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `180us`, `2.5ms`, `1.20s`.
pub fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn seconds(s: f64) -> String {
    let whole = s as u64;
    match whole {
        0..=59 => format!("{s:.1}s"),
        60..=3599 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole / 60 % 60),
    }
}

/// `ok 200 in 180us, 3s ago`, or `-` before any check.
fn last_check(check: &Value, now_ms: u64) -> String {
    if !check.is_object() {
        return "-".to_string();
    }
    let verdict = if check["ok"] == Value::Bool(true) {
        "ok"
    } else {
        "failed"
    };
    let mut text = verdict.to_string();
    if let Some(status) = check["status"].as_u64() {
        text.push_str(&format!(" {status}"));
    }
    if let Some(latency) = check["latency_us"].as_u64() {
        text.push_str(&format!(" in {}", micros(latency)));
    }
    if let Some(at) = check["at_unix_ms"].as_u64() {
        text.push_str(&format!(
            ", {} ago",
            seconds(now_ms.saturating_sub(at) as f64 / 1e3)
        ));
    }
    text
}

/// A JSON string without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_well() {
        assert_eq!(micros(180), "180us");
        assert_eq!(micros(2_500), "2.5ms");
        assert_eq!(micros(1_200_000), "1.20s");
        assert_eq!(seconds(75.0), "1m15s");
    }

    #[test]
    fn status_table() {
        let document = json!({
            "version": 3, "strategy": "round_robin", "uptime_s": 12.5,
            "workers": [{}, {}],
            "backends": [
                {"id": 1, "url": "http://127.0.0.1:8082", "weight": 1, "state": "up",
                 "active_connections": 2, "requests": 10, "failures": 1,
                 "last_check": {"ok": true, "status": 200, "latency_us": 180, "at_unix_ms": 0}},
                {"id": 2, "url": "http://127.0.0.1:8083", "weight": 5, "state": "draining",
                 "active_connections": 0, "requests": 0, "failures": 0, "last_check": null}
            ]
        });
        let latency =
            json!({"backends": {"http://127.0.0.1:8082": {"count": 10, "p50": 210, "p99": 1500}}});
        let text = status(&document, &latency);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "strategy round_robin, pool version 3, 2 worker cores, up 12.5s"
        );
        assert!(lines[2].starts_with("ID  BACKEND"), "{text}");
        assert!(
            lines[3].contains("210us") && lines[3].contains("1.5ms"),
            "{text}"
        );
        assert!(lines[3].contains("ok 200 in 180us"), "{text}");
        assert!(
            lines[4].contains("draining") && lines[4].ends_with("-"),
            "{text}"
        );
    }

    #[test]
    fn bars_scale_to_the_fullest_bucket() {
        let chart = bars(
            &json!([{"le_us": 100, "count": 10}, {"le_us": 200, "count": 0}, {"le_us": 500, "count": 1}]),
        );
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].matches('#').count(), 40);
        assert_eq!(lines[2].matches('#').count(), 0);
        assert_eq!(lines[3].matches('#').count(), 4);
        assert_eq!(bars(&json!([])), "no requests in this window\n");
    }
}
