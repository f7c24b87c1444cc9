//! `percore ctl`: the operator's command line over the admin API
//! (`shared/admin-api.md`). Each subcommand is one or two requests, printed
//! as text for people or, with `--json`, as the API's JSON for scripts.
//!
//! - `client`: a blocking HTTP/1.1 client, one request per connection.
//! - `render`: the text forms: tables, durations, the latency bar chart.
//!
//! Exit status: 0 on success, 1 when the proxy cannot be reached or answers
//! an error (the message says which and why), 2 for a usage error (clap).

mod client;
mod render;

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::{CtlArgs, CtlCommand};
pub use client::{AdminClient, CtlError};

/// Runs one `percore ctl` command, printing its result or its error.
pub fn run(args: CtlArgs) -> ExitCode {
    let client = AdminClient::new(&args.admin, args.token.as_deref());
    match execute(&client, &args.command, args.json) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("percore ctl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What the command prints, or why it failed.
pub fn execute(client: &AdminClient, command: &CtlCommand, json: bool) -> Result<String, CtlError> {
    match command {
        CtlCommand::Status => {
            let mut status = client.get("/status")?;
            let latency = client.get("/histograms?window=10s")?;
            if json {
                add_latency(&mut status, &latency);
                return Ok(pretty(&status));
            }
            Ok(render::status(&status, &latency))
        }
        CtlCommand::Add { url, weight } => {
            let mut body = json!({ "url": url });
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            let backend = client.request("POST", "/backends", Some(&body))?;
            if json {
                return Ok(pretty(&backend));
            }
            Ok(format!(
                "added backend {} {} (weight {}); every core routes to it\n",
                backend["id"],
                text(&backend["url"]),
                backend["weight"]
            ))
        }
        CtlCommand::Remove { backend } => {
            let removed = match backend.parse::<u64>() {
                Ok(id) => client.request("DELETE", &format!("/backends/{id}"), None)?,
                Err(_) => {
                    client.request("DELETE", "/backends", Some(&json!({ "url": backend })))?
                }
            };
            if json {
                return Ok(pretty(&removed));
            }
            let drained = if removed["drained"] == json!(false) {
                "its requests in flight had not finished within the drain timeout"
            } else {
                "its requests in flight had finished"
            };
            Ok(format!(
                "removed backend {} {}; {drained}\n",
                removed["id"],
                text(&removed["url"])
            ))
        }
        CtlCommand::Strategy { name } => {
            let answer = client.request("POST", "/strategy", Some(&json!({ "strategy": name })))?;
            if json {
                return Ok(pretty(&answer));
            }
            Ok(format!(
                "strategy {} (was {}); every core uses it\n",
                text(&answer["strategy"]),
                text(&answer["previous"])
            ))
        }
        CtlCommand::Reload => {
            let answer = client.request("POST", "/reload", None)?;
            if json {
                return Ok(pretty(&answer));
            }
            let list = |key: &str| {
                let names: Vec<String> = answer[key]
                    .as_array()
                    .map(|items| items.iter().map(text).collect())
                    .unwrap_or_default();
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            };
            Ok(format!(
                "reloaded (pool version {}): added {}; removed {}; reweighted {}; settings changed {}; left as they are (not live) {}\n",
                text(&answer["version"]),
                list("added"),
                list("removed"),
                list("reweighted"),
                list("settings"),
                list("not_live"),
            ))
        }
        CtlCommand::Histograms { window } => {
            let document = client.get(&format!("/histograms?window={}", query_value(window)))?;
            if json {
                return Ok(pretty(&document));
            }
            Ok(render::histograms(&document))
        }
    }
}

/// Puts each backend's 10-second p50 and p99 into the status document, as
/// `latency_10s`, for `status --json`.
fn add_latency(status: &mut Value, latency: &Value) {
    let Some(backends) = status["backends"].as_array_mut() else {
        return;
    };
    for backend in backends {
        let url = backend["url"].as_str().unwrap_or_default().to_string();
        let summary = &latency["backends"][url.as_str()];
        backend["latency_10s"] = json!({
            "count": summary["count"].as_u64().unwrap_or(0),
            "p50_us": summary["p50"].as_u64().unwrap_or(0),
            "p99_us": summary["p99"].as_u64().unwrap_or(0),
        });
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A JSON string without its quotes (anything else as JSON).
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes what is not unreserved (RFC 3986 §2.3), so that any
/// window the user types makes a well-formed request line (and a 400 from
/// the API if it is not a window).
fn query_value(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(query_value("10s"), "10s");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn status_json_gets_latency() {
        let mut status = json!({"backends": [{"url": "http://a:1"}, {"url": "http://b:2"}]});
        let latency = json!({"backends": {"http://a:1": {"count": 3, "p50": 100, "p99": 900}}});
        add_latency(&mut status, &latency);
        assert_eq!(
            status["backends"][0]["latency_10s"],
            json!({"count": 3, "p50_us": 100, "p99_us": 900})
        );
        assert_eq!(status["backends"][1]["latency_10s"]["count"], 0);
    }
}
