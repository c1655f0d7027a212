//! The client side of the HTTP API: the admin and client commands (`mapq topics ...`,
//! `mapq produce`, `mapq consume`) and the load generator (`mapq bench`), all over one
//! [`Api`] client that carries the token and trusted certificates. Human-readable output
//! unless `--json`. Bodies are the server's own types, from [`crate::api`].

pub mod bench;
mod cluster;
mod consume;
mod groups;
mod member;
mod produce;
mod queue;
mod topics;

pub use cluster::{cluster, ClusterCommand};
pub use consume::{consume, ConsumeArgs, OutputFormat};
pub use groups::{groups, GroupsCommand};
pub use produce::{produce, ProduceArgs};
pub use queue::{queue, QueueCommand};
pub use topics::{topics, TopicsCommand};

use serde_json::Value;

use crate::api::ErrorBody;

/// Where the server is, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's base URL (`http://` is assumed when no scheme is given).
    #[arg(
        long,
        global = true,
        env = "MAPQ_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Print JSON: the server's answers instead of tables (`consume`: records as JSON lines,
    /// like `--format json`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token, for a server with tokens configured.
    #[arg(long, global = true, env = "MAPQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust besides the system's (for an https server with a
    /// private or self-signed certificate).
    #[arg(
        long,
        global = true,
        env = "MAPQ_CACERT",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub cacert: Option<std::path::PathBuf>,
}

/// What a client command failed with, said for people.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

pub type Result<T> = std::result::Result<T, ClientError>;

/// An error and its causes, outermost first: reqwest's own message rarely says why (a
/// refused connection, an untrusted certificate).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The HTTP API, as a client: a connection pool with the token and trusted certificates
/// of [`ClientArgs`], and the server's base URL.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    args: ClientArgs,
}

impl Api {
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let http = Self::client(args)?;
        // `--server 127.0.0.1:8080` means plain HTTP, as a browser would take it.
        let base = args.server.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Ok(Api {
            http,
            base,
            args: args.clone(),
        })
    }

    /// Another connection pool with the same token and certificates.
    pub fn fresh_client(&self) -> Result<reqwest::Client> {
        Self::client(&self.args)
    }

    fn client(args: &ClientArgs) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().tcp_nodelay(true);
        if let Some(token) = &args.token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ClientError("the token holds characters a header cannot".into()))?;
            value.set_sensitive(true);
            let headers =
                reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        builder.build().map_err(|e| ClientError(e.to_string()))
    }

    /// Sends a request; an error answer becomes its `message` (and `code`).
    pub async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body(req).await?).unwrap_or(Value::Null))
    }

    /// The body of a success answer.
    async fn body(&self, req: reqwest::RequestBuilder) -> Result<bytes::Bytes> {
        self.send(req)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError(e.to_string()))
    }

    /// Sends a request and returns the answer if it is a success; an error answer becomes
    /// its `message` (and `code`).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            let why = causes(&e);
            let hint = if why.contains("CaUsedAsEndEntity") {
                " (the server's certificate is marked as a CA: make it with CA:FALSE)"
            } else if self.args.cacert.is_none() && why.contains("certificate") {
                " (a private or self-signed server certificate? pass --cacert FILE)"
            } else if why.contains("invalid HTTP version") && self.base.starts_with("http://") {
                " (does the server speak TLS? use an https:// --server)"
            } else {
                ""
            };
            ClientError(format!("cannot reach {}: {why}{hint}", self.base))
        })?;
        self.check(resp).await
    }

    /// The answer if it is a success; an error answer becomes its `message` (and `code`).
    pub async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => ClientError(format!(
                "{} ({}, {})",
                error.message,
                error.code,
                status.as_u16()
            )),
            Err(_) => ClientError(format!("request failed ({})", status.as_u16())),
        })
    }

    /// The connection pool (its requests carry the token).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request and decodes the success answer as `T`.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        serde_json::from_slice(&self.body(req).await?)
            .map_err(|e| ClientError(format!("unexpected answer from the server: {e}")))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// `println!` for the client commands' output: a reader that went away (`| head`) ends
/// the output quietly instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

pub(crate) fn print_json(v: &Value) {
    say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as left-aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
