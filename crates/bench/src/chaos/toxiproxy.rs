//! Toxiproxy's HTTP API (https://github.com/Shopify/toxiproxy#http-api): one
//! proxy between the gateway and the broker, and the toxics the scenarios
//! add and remove. Every call is bounded by a timeout and fails loudly: a
//! fault that was not injected must not pass for a fault survived.

use serde_json::{json, Value};
use std::time::Duration;

pub struct Toxiproxy {
    api: String,
    proxy: String,
    http: reqwest::Client,
}

impl Toxiproxy {
    pub fn new(api: &str, proxy: &str) -> Self {
        Toxiproxy { api: api.trim_end_matches('/').to_owned(), proxy: proxy.to_owned(), http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<String> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.api)).timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| anyhow::anyhow!("toxiproxy {method} {path}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "toxiproxy {method} {path}: {status} {text}");
        Ok(text)
    }

    /// The proxy as it is now (`listen`, `upstream`, `enabled`, `toxics`).
    pub async fn proxy(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.call(reqwest::Method::GET, &format!("/proxies/{}", self.proxy), None).await?)?)
    }

    /// Creates the proxy (`listen` -> `upstream`), or checks the one there
    /// and clears what an earlier run left: its toxics, a disabled state.
    pub async fn ensure(&self, listen: &str, upstream: &str) -> anyhow::Result<()> {
        if let Ok(p) = self.proxy().await {
            anyhow::ensure!(
                p["upstream"] == upstream,
                "toxiproxy proxy {} points at {} instead of {upstream}",
                self.proxy,
                p["upstream"]
            );
            for t in p["toxics"].as_array().into_iter().flatten() {
                if let Some(name) = t["name"].as_str() {
                    self.remove_toxic(name).await?;
                }
            }
            return self.set_enabled(true).await;
        }
        self.call(reqwest::Method::POST, "/proxies", Some(json!({"name": self.proxy, "listen": listen, "upstream": upstream, "enabled": true})))
            .await?;
        Ok(())
    }

    /// Disabled: every connection through the proxy is closed and new ones
    /// are refused (the broker is unreachable).
    pub async fn set_enabled(&self, enabled: bool) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, &format!("/proxies/{}", self.proxy), Some(json!({"enabled": enabled}))).await?;
        Ok(())
    }

    pub async fn add_toxic(&self, name: &str, kind: &str, stream: &str, attributes: Value) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{}/toxics", self.proxy),
            Some(json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes})),
        )
        .await?;
        Ok(())
    }

    pub async fn remove_toxic(&self, name: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/proxies/{}/toxics/{name}", self.proxy), None).await?;
        Ok(())
    }
}
