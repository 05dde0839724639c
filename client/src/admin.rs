//! The admin API client: one method per call of [`crate::api`].

use std::io::Write;

use crate::Error;
use crate::api::{
    AggInfo, Deploy, ErasureStatus, LogStats, PluginInfo, ReportInfo, ReportRun, RowRange,
    RunAccepted, RunRequest, SchemaCheck, SchemaInfo, SchemaMode, SchemaRegistered,
};

/// A client of one broker's admin API (`http://ADDR`).
#[derive(Debug, Clone)]
pub struct Admin {
    addr: String,
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Admin {
    /// A client of the admin API at `addr` (`IP:port`).
    pub fn new(addr: impl std::fmt::Display) -> Self {
        let addr = addr.to_string();
        Self {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// Sends `token` (an API token, `Authorization: Bearer`) with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The address it talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            addr: self.addr.clone(),
            message: e.to_string(),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let url = resp.url().path().to_string();
        let status = resp.status().to_string();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        Err(Error::Refused {
            url,
            status,
            message,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let resp = self.send(req).await?;
        let url = resp.url().path().to_string();
        let bytes = resp.bytes().await.map_err(|e| Error::Unreachable {
            addr: self.addr.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// Streams an NDJSON answer into `out` as it arrives.
    async fn ndjson_to(&self, url: String, out: &mut impl Write) -> Result<(), Error> {
        let mut resp = self.send(self.http.get(url)).await?;
        loop {
            let chunk = resp.chunk().await.map_err(|e| Error::Unreachable {
                addr: self.addr.clone(),
                message: e.to_string(),
            })?;
            let Some(chunk) = chunk else { break };
            out.write_all(&chunk)
                .map_err(|e| Error::Input(format!("writing the answer: {e}")))?;
        }
        Ok(())
    }

    async fn ndjson(&self, url: String) -> Result<Vec<serde_json::Value>, Error> {
        let mut out = Vec::new();
        self.ndjson_to(url.clone(), &mut out).await?;
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).map_err(|e| Error::Protocol {
                    url: url.clone(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// `GET /v1/archive`.
    pub async fn archive_status(&self) -> Result<crate::api::ArchiveStatus, Error> {
        self.json(self.http.get(format!("{}/v1/archive", self.base)))
            .await
    }

    /// `GET /v1/log/stats`.
    pub async fn log_stats(&self) -> Result<LogStats, Error> {
        self.json(self.http.get(format!("{}/v1/log/stats", self.base)))
            .await
    }

    fn read_url(&self, topic: &str, from: u64, limit: usize) -> String {
        format!(
            "{}/v1/log/read?from={from}&limit={limit}&topic={}",
            self.base,
            enc(topic)
        )
    }

    /// `GET /v1/log/read`: up to `limit` entries of `topic` (`events`, `dead_letters`,
    /// `late_events`) from offset `from`, streamed into `out` as NDJSON.
    pub async fn log_read_to(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        self.ndjson_to(self.read_url(topic, from, limit), out).await
    }

    /// [`Admin::log_read_to`], parsed: one value per entry.
    pub async fn log_read(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, Error> {
        self.ndjson(self.read_url(topic, from, limit)).await
    }

    /// `GET /v1/plugins`.
    pub async fn plugins(&self) -> Result<Vec<PluginInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/plugins", self.base)))
            .await
    }

    /// `PUT /v1/plugins/NAME`: deploys `wasm` as a new version of plugin `name`; returns the
    /// broker's answer (the version deployed).
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        d: &Deploy,
    ) -> Result<serde_json::Value, Error> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(v) = &d.version {
            q.append_pair("version", v);
        }
        if let Some(p) = &d.policy {
            q.append_pair("policy", p);
        }
        if let Some(b) = &d.backfill_from {
            q.append_pair("backfill_from", b);
        }
        if let Some(t) = &d.tenant {
            q.append_pair("tenant", t);
        }
        for (k, v) in &d.params {
            q.append_pair("param", &format!("{k}={v}"));
        }
        for (key, v) in [
            ("deadline_ms", d.deadline_ms),
            ("memory_bytes_max", d.memory_bytes_max),
            ("fuel_per_call", d.fuel_per_call),
        ] {
            if let Some(v) = v {
                q.append_pair(key, &v.to_string());
            }
        }
        for c in &d.capabilities {
            q.append_pair("capability", c);
        }
        let url = format!("{}/v1/plugins/{}?{}", self.base, enc(name), q.finish());
        self.json(self.http.put(url).body(wasm)).await
    }

    /// `POST /v1/plugins/NAME/pause`.
    pub async fn pause(&self, name: &str) -> Result<serde_json::Value, Error> {
        let url = format!("{}/v1/plugins/{}/pause", self.base, enc(name));
        self.json(self.http.post(url)).await
    }

    /// `POST /v1/plugins/NAME/resume`.
    pub async fn resume(&self, name: &str) -> Result<serde_json::Value, Error> {
        let url = format!("{}/v1/plugins/{}/resume", self.base, enc(name));
        self.json(self.http.post(url)).await
    }

    /// `DELETE /v1/plugins/NAME`.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let url = format!("{}/v1/plugins/{}", self.base, enc(name));
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    /// `GET /v1/aggregates`.
    pub async fn aggregates(&self) -> Result<Vec<AggInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/aggregates", self.base)))
            .await
    }

    fn rows_url(&self, name: &str, r: &RowRange) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("from", r.from.clone()),
            ("to", r.to.clone()),
            ("limit", r.limit.map(|l| l.to_string())),
        ] {
            if let Some(v) = v {
                q.append_pair(k, &v);
            }
        }
        format!(
            "{}/v1/aggregates/{}/rows?{}",
            self.base,
            enc(name),
            q.finish()
        )
    }

    /// `GET /v1/aggregates/NAME/rows`, streamed into `out` as NDJSON.
    pub async fn agg_rows_to(
        &self,
        name: &str,
        range: &RowRange,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        self.ndjson_to(self.rows_url(name, range), out).await
    }

    /// [`Admin::agg_rows_to`], parsed: one value per row.
    pub async fn agg_rows(
        &self,
        name: &str,
        range: &RowRange,
    ) -> Result<Vec<serde_json::Value>, Error> {
        self.ndjson(self.rows_url(name, range)).await
    }

    /// `GET /v1/reports`.
    pub async fn reports(&self) -> Result<Vec<ReportInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/reports", self.base)))
            .await
    }

    /// `GET /v1/dlq`: dead letters (or late events, `kind=late`) the filters select.
    pub async fn dlq_list(
        &self,
        kind: Option<&str>,
        plugin: Option<&str>,
        since: Option<&str>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, Error> {
        let mut url = format!("{}/v1/dlq?limit={limit}", self.base);
        for (k, v) in [("kind", kind), ("plugin", plugin), ("since", since)] {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        self.json(self.http.get(url)).await
    }

    /// `GET /v1/dlq/ID`: one dead letter (a late event with `late`).
    pub async fn dlq_show(&self, id: u64, late: bool) -> Result<serde_json::Value, Error> {
        let mut url = format!("{}/v1/dlq/{id}", self.base);
        if late {
            url.push_str("?topic=late_events");
        }
        self.json(self.http.get(url)).await
    }

    /// `POST /v1/dlq/redrive`: re-drives the dead letters `filter` selects (`kind`, `plugin`,
    /// `since`, `ids`), once each.
    pub async fn dlq_redrive(
        &self,
        filter: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let url = format!("{}/v1/dlq/redrive", self.base);
        self.json(self.http.post(url).json(filter)).await
    }

    /// `POST /v1/erasures`: erases the events of the identity `values` (field → value, e.g.
    /// `user_id`); answers once the request is durable.
    pub async fn erase(
        &self,
        values: &std::collections::BTreeMap<String, String>,
    ) -> Result<ErasureStatus, Error> {
        let url = format!("{}/v1/erasures", self.base);
        self.json(self.http.post(url).json(values)).await
    }

    /// `GET /v1/erasures`: every erasure request, oldest first.
    pub async fn erasures(&self) -> Result<Vec<ErasureStatus>, Error> {
        self.json(self.http.get(format!("{}/v1/erasures", self.base)))
            .await
    }

    /// `GET /v1/erasures/ID`.
    pub async fn erasure(&self, id: u64) -> Result<ErasureStatus, Error> {
        self.json(self.http.get(format!("{}/v1/erasures/{id}", self.base)))
            .await
    }

    /// `GET /v1/dq`: every checked event type with each check's state.
    pub async fn dq_list(&self) -> Result<Vec<serde_json::Value>, Error> {
        self.json(self.http.get(format!("{}/v1/dq", self.base)))
            .await
    }

    /// `PUT /v1/dq/TYPE`: sets a type's data-quality checks.
    pub async fn dq_set(
        &self,
        event_type: &str,
        checks: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let url = format!("{}/v1/dq/{}", self.base, enc(event_type));
        self.json(self.http.put(url).json(checks)).await
    }

    /// `DELETE /v1/dq/TYPE`.
    pub async fn dq_remove(&self, event_type: &str) -> Result<(), Error> {
        let url = format!("{}/v1/dq/{}", self.base, enc(event_type));
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    /// `GET /v1/schemas`: every event type's schemas.
    pub async fn schemas(&self) -> Result<Vec<SchemaInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/schemas", self.base)))
            .await
    }

    /// `GET /v1/schemas/TYPE`.
    pub async fn schema(&self, event_type: &str) -> Result<SchemaInfo, Error> {
        let url = format!("{}/v1/schemas/{}", self.base, enc(event_type));
        self.json(self.http.get(url)).await
    }

    /// `POST /v1/schemas/TYPE`: registers `schema` as the type's next version; refused (with
    /// every violation in the message) when it breaks the type's compatibility mode.
    pub async fn schema_register(
        &self,
        event_type: &str,
        schema: &serde_json::Value,
    ) -> Result<SchemaRegistered, Error> {
        let url = format!("{}/v1/schemas/{}", self.base, enc(event_type));
        self.json(self.http.post(url).json(schema)).await
    }

    /// `POST /v1/schemas/TYPE/check`: whether `schema` could be registered, and why not.
    pub async fn schema_check(
        &self,
        event_type: &str,
        schema: &serde_json::Value,
    ) -> Result<SchemaCheck, Error> {
        let url = format!("{}/v1/schemas/{}/check", self.base, enc(event_type));
        self.json(self.http.post(url).json(schema)).await
    }

    /// `PUT /v1/schemas/TYPE/mode`, or the registry's default (`PUT /v1/schema-settings`)
    /// without a type.
    pub async fn schema_set_mode(
        &self,
        event_type: Option<&str>,
        mode: &str,
    ) -> Result<SchemaMode, Error> {
        let url = match event_type {
            Some(t) => format!("{}/v1/schemas/{}/mode", self.base, enc(t)),
            None => format!("{}/v1/schema-settings", self.base),
        };
        let body = SchemaMode {
            mode: mode.to_string(),
        };
        self.json(self.http.put(url).json(&body)).await
    }

    /// `GET /v1/schema-settings`: the registry's default mode.
    pub async fn schema_default_mode(&self) -> Result<SchemaMode, Error> {
        self.json(self.http.get(format!("{}/v1/schema-settings", self.base)))
            .await
    }

    /// `GET /v1/schema-registry`: the document agents validate with.
    pub async fn schema_registry(&self) -> Result<serde_json::Value, Error> {
        self.json(self.http.get(format!("{}/v1/schema-registry", self.base)))
            .await
    }

    /// `PUT /v1/reports/NAME[?tenant=T]`: deploys a report definition (its TOML text), for
    /// `tenant` (an operator's token; a tenant's deploys for its own).
    pub async fn report_deploy(
        &self,
        name: &str,
        toml: String,
        tenant: Option<&str>,
    ) -> Result<ReportInfo, Error> {
        let mut url = format!("{}/v1/reports/{}", self.base, enc(name));
        if let Some(t) = tenant {
            url.push_str(&format!("?tenant={}", enc(t)));
        }
        self.json(self.http.put(url).body(toml)).await
    }

    /// `POST /v1/reports/NAME/runs`: queues a run; with `idempotency_key`, a repeat returns the
    /// first request's run.
    pub async fn report_run(
        &self,
        name: &str,
        req: &RunRequest,
        idempotency_key: Option<&str>,
    ) -> Result<RunAccepted, Error> {
        let url = format!("{}/v1/reports/{}/runs", self.base, enc(name));
        let mut r = self.http.post(url).json(req);
        if let Some(k) = idempotency_key {
            r = r.header("idempotency-key", k);
        }
        self.json(r).await
    }

    /// `GET /v1/reports/runs/ID`.
    pub async fn report_status(&self, id: &str) -> Result<ReportRun, Error> {
        let url = format!("{}/v1/reports/runs/{}", self.base, enc(id));
        self.json(self.http.get(url)).await
    }

    /// `GET /v1/reports/NAME/runs`: the report's runs, newest first.
    pub async fn report_history(&self, name: &str, limit: usize) -> Result<Vec<ReportRun>, Error> {
        let url = format!("{}/v1/reports/{}/runs?limit={limit}", self.base, enc(name));
        self.json(self.http.get(url)).await
    }

    /// The bytes behind a run's download link (`ReportOutput::link`: a URL, pre-signed in S3,
    /// or a path on this admin port).
    pub async fn report_output(&self, link: &str) -> Result<Vec<u8>, Error> {
        let url = if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else {
            format!("{}{link}", self.base)
        };
        let resp = self.send(self.http.get(url)).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| Error::Unreachable {
                addr: self.addr.clone(),
                message: e.to_string(),
            })
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let resp = self
            .send(self.http.get(format!("{}/metrics", self.base)))
            .await?;
        resp.text().await.map_err(|e| Error::Unreachable {
            addr: self.addr.clone(),
            message: e.to_string(),
        })
    }

    /// `GET /readyz`: `Ok` once the broker is ready; the broker's reason otherwise.
    pub async fn ready(&self) -> Result<(), Error> {
        self.send(self.http.get(format!("{}/readyz", self.base)))
            .await
            .map(|_| ())
    }

    /// `POST /v1/tokens`: a new API token (the token is in the answer only).
    pub async fn token_create(
        &self,
        role: &str,
        tenant: Option<&str>,
        description: &str,
    ) -> Result<crate::api::TokenCreated, Error> {
        self.json(
            self.http.post(format!("{}/v1/tokens", self.base)).json(
                &serde_json::json!({"role": role, "tenant": tenant, "description": description}),
            ),
        )
        .await
    }

    /// `GET /v1/tokens`.
    pub async fn tokens(&self) -> Result<Vec<crate::api::TokenInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/tokens", self.base)))
            .await
    }

    /// `DELETE /v1/tokens/ID`.
    pub async fn token_revoke(&self, id: &str) -> Result<crate::api::TokenInfo, Error> {
        self.json(
            self.http
                .delete(format!("{}/v1/tokens/{}", self.base, enc(id))),
        )
        .await
    }

    /// `POST /v1/agents`: a certificate and key for agent `name` of `tenant`.
    pub async fn agent_enroll(
        &self,
        name: &str,
        tenant: &str,
    ) -> Result<crate::api::AgentEnrolled, Error> {
        self.json(
            self.http
                .post(format!("{}/v1/agents", self.base))
                .json(&serde_json::json!({"name": name, "tenant": tenant})),
        )
        .await
    }

    /// `GET /v1/agents`.
    pub async fn agents(&self) -> Result<Vec<crate::api::AgentInfo>, Error> {
        self.json(self.http.get(format!("{}/v1/agents", self.base)))
            .await
    }

    /// `POST /v1/agents/NAME/revoke`.
    pub async fn agent_revoke(&self, name: &str) -> Result<crate::api::AgentInfo, Error> {
        self.json(
            self.http
                .post(format!("{}/v1/agents/{}/revoke", self.base, enc(name))),
        )
        .await
    }
}
