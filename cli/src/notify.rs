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

/// Where a URL points, without its secret path.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split('/').next().unwrap_or_default();
    // Never the `user:password@` either.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/…")
}

fn post(urls: &[String], discord_text: &str, body: &serde_json::Value) {
    if urls.is_empty() {
        return;
    }
    let client = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vault: warning: cannot send notifications: {e}");
            return;
        }
    };
    for url in urls {
        let payload = if is_discord(url) {
            json!({ "content": discord_text, "username": "vault" })
        } else {
            body.clone()
        };
        let result = client.post(url).json(&payload).send();
        match result {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!(
                "vault: warning: webhook {} answered {}",
                redacted(url),
                r.status()
            ),
            Err(e) => eprintln!(
                "vault: warning: webhook {} failed: {}",
                redacted(url),
                e.without_url()
            ),
        }
    }
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

/// Sends the periodic success summary.
pub(crate) fn heartbeat(urls: &[String], host: &str, time: &str, lines: &[(String, String)]) {
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
    post(urls, &text, &body);
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
    }
}
