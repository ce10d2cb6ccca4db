//! Webhook alerts: a POST on failure (Discord's message format when the URL
//! is a Discord webhook, a JSON object otherwise) and a periodic success
//! heartbeat. Messages carry source, error, host and time, never secrets;
//! URLs (which are credentials) are never printed.

use serde_json::json;
use std::time::Duration;

fn is_discord(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    (host.ends_with("discord.com") || host.ends_with("discordapp.com"))
        && rest.contains("/api/webhooks/")
}

/// Where a URL points, without its secret path, query or credentials.
pub(crate) fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            (None, _) => format!("{}:…", u.scheme()),
        },
        Err(_) => "(a webhook URL that does not parse)".into(),
    }
}

/// Why `url` cannot be a webhook, for the config check: a URL without its
/// scheme (`discord.com/api/webhooks/...`) was accepted, and the first
/// alert was then lost as a "builder error".
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!(
            "{}: not a URL ({e}); give it as https://host/path",
            redacted(url)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{}: not an http:// or https:// URL with a host",
            redacted(url)
        ));
    }
    Ok(())
}

/// How often a POST is tried: a network blip must not lose an alert, which
/// nothing sends again.
const ATTEMPTS: u32 = 3;

/// POSTs to every URL at once (a hanging one costs its timeout, not one
/// per URL in turn); whether at least one took it.
fn post(urls: &[String], discord_text: &str, body: &serde_json::Value) -> bool {
    if urls.is_empty() {
        return false;
    }
    let client = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vault: warning: cannot send notifications: {e}");
            return false;
        }
    };
    std::thread::scope(|scope| {
        let sends: Vec<_> = urls
            .iter()
            .map(|url| {
                let client = &client;
                scope.spawn(move || {
                    let payload = if is_discord(url) {
                        json!({ "content": discord_text, "username": "vault" })
                    } else {
                        body.clone()
                    };
                    send(client, url, &payload)
                })
            })
            .collect();
        // Every send joined (no short cut), then: did any arrive?
        sends
            .into_iter()
            .map(|s| s.join().unwrap_or(false))
            .filter(|&ok| ok)
            .count()
            > 0
    })
}

/// One webhook, retried after a refused or dropped connection or a 5xx/429
/// answer (not after a timeout: that took 15 s already); failures are
/// printed with their cause.
fn send(client: &reqwest::blocking::Client, url: &str, payload: &serde_json::Value) -> bool {
    for attempt in 1..=ATTEMPTS {
        let why = match client.post(url).json(payload).send() {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let retry = r.status().is_server_error()
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS;
                (format!("answered {}", r.status()), retry)
            }
            Err(e) => {
                let retry = !e.is_timeout() && !e.is_builder();
                // reqwest's own text is "error sending request": the
                // causes say whether it was refused, reset or timed out.
                let e = anyhow::Error::new(e.without_url());
                (format!("failed: {e:#}"), retry)
            }
        };
        let (why, retry) = why;
        if !retry || attempt == ATTEMPTS {
            eprintln!("vault: warning: webhook {} {why}", redacted(url));
            return false;
        }
        std::thread::sleep(Duration::from_secs(u64::from(attempt)));
    }
    false
}

/// What went wrong, for [`alert`].
#[derive(Clone, Copy)]
pub(crate) enum Alert {
    BackupFailed,
    /// Saved, without entries that could not be read (exit 3).
    BackupIncomplete,
    DrillFailed,
    /// No snapshot of the source within its `max_age` (`vault status --alert`).
    BackupStale,
    /// No drill of the source passed within its `drill_max_age`.
    DrillStale,
    /// `vault status --alert` could not open the repository to look.
    StatusFailed,
}

/// Reports a failure of `source`.
pub(crate) fn alert(
    urls: &[String],
    what: Alert,
    source: &str,
    error: &str,
    host: &str,
    time: &str,
) {
    let (event, title) = match what {
        Alert::BackupFailed => ("backup_failed", "vault backup failed"),
        Alert::BackupIncomplete => (
            "backup_incomplete",
            "vault backup saved, but some files could not be read",
        ),
        Alert::DrillFailed => ("drill_failed", "vault restore drill failed"),
        Alert::BackupStale => ("backup_stale", "vault backup overdue"),
        Alert::DrillStale => ("drill_stale", "vault restore drill overdue"),
        Alert::StatusFailed => ("status_failed", "vault status cannot read the repository"),
    };
    let text = format!("**{title}** on `{host}`\nsource: `{source}`\nerror: {error}\ntime: {time}");
    let body = json!({
        "event": event,
        "source": source,
        "error": error,
        "host": host,
        "time": time,
    });
    post(urls, &text, &body);
}

/// Sends the periodic success summary; whether a webhook took it.
pub(crate) fn heartbeat(
    urls: &[String],
    host: &str,
    time: &str,
    lines: &[(String, String)],
) -> bool {
    let mut text = format!("**vault heartbeat** from `{host}`: all sources OK ({time})");
    for (source, summary) in lines {
        text.push_str(&format!("\n- `{source}`: {summary}"));
    }
    let body = json!({
        "event": "heartbeat",
        "host": host,
        "time": time,
        "sources": lines.iter().map(|(s, m)| json!({"source": s, "summary": m})).collect::<Vec<_>>(),
    });
    post(urls, &text, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discord_urls_are_detected_and_redacted() {
        assert!(is_discord("https://discord.com/api/webhooks/1/abc"));
        assert!(is_discord("https://discordapp.com/api/webhooks/1/abc"));
        assert!(!is_discord("https://example.com/api/webhooks/1"));
        assert!(!is_discord("https://discord.com.evil.net/api/webhooks/1"));
        assert_eq!(
            redacted("https://discord.com/api/webhooks/1/secret"),
            "https://discord.com/…"
        );
        assert_eq!(
            redacted("http://hookuser:HookSecret55@127.0.0.1:47123/hook/TOKEN"),
            "http://127.0.0.1:47123/…"
        );
        // Without a path, the query is no part of the host.
        assert_eq!(
            redacted("http://u:SECRETPW@127.0.0.1:18084?token=SECRETQ#frag"),
            "http://127.0.0.1:18084/…"
        );
        assert!(!redacted("not a url SECRETX").contains("SECRETX"));
    }

    #[test]
    fn webhook_urls_need_a_scheme_and_a_host() {
        assert!(check_url("https://discord.com/api/webhooks/1/X").is_ok());
        assert!(check_url("http://127.0.0.1:8080?token=x").is_ok());
        for bad in [
            "discord.com/api/webhooks/1/SECRET",
            "127.0.0.1:18081/hook/SECRET",
            "ftp://host/SECRET",
            "not a url SECRET",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(!e.contains("SECRET"), "{e}");
        }
    }
}
