//! The HTTP client of keel's API: a base URL, a connection pool and timeouts; URLs built from
//! path segments; bodies sent as bytes; error answers turned into [`ClientError`]s; success
//! answers kept as bytes and decoded into `keel-api` types.

use std::marker::PhantomData;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::error::{ClientError, error_chain, problem_error};
use crate::limits::{CONNECT_TIMEOUT_MS, IDLE_CONNECTIONS_MAX, REQUEST_TIMEOUT_MS};

/// Where keel serves by default (`keel serve` without `--listen`).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7171";

/// `Content-Type` of plain JSON request bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// `Content-Type` of one event in CloudEvents structured mode.
pub const CONTENT_TYPE_EVENT: &str = "application/cloudevents+json";

/// `Content-Type` of a CloudEvents batch: a JSON array of structured events.
pub const CONTENT_TYPE_BATCH: &str = "application/cloudevents-batch+json";

/// A request body and its `Content-Type`.
#[derive(Debug, Clone)]
pub struct Body {
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The bytes, moved into the request without a copy.
    pub bytes: Vec<u8>,
}

impl Body {
    /// `value` as a JSON body.
    pub fn json(value: &impl serde::Serialize) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(value).map_err(|error| ClientError::InvalidEvent {
            detail: error.to_string(),
        })?;
        Ok(Self {
            content_type: CONTENT_TYPE_JSON,
            bytes,
        })
    }
}

/// A success answer: its status and body, as received.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status: 2xx, or one the call accepts (`/readyz` explains its 503 in the body).
    pub status: StatusCode,
    /// The body as received.
    pub body: Vec<u8>,
}

impl Reply {
    /// Decodes the body as `T`, which may borrow from it; a mismatch is
    /// [`ClientError::Unexpected`].
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|error| ClientError::unexpected(&error))
    }
}

/// An answer type of the API, named by its `'static` form: what [`Answer::value`] decodes the
/// body into, borrowing from it where the type borrows (events stay raw JSON, uncopied).
pub trait Decode {
    /// The decoded answer, borrowing from the body for `'a`.
    type Value<'a>: Deserialize<'a>;
}

/// A success answer kept as the server sent it, checked on receipt to decode as `K`: the
/// bytes for a caller that passes the JSON on verbatim ([`Answer::body`]), the typed value for
/// the others ([`Answer::value`]).
///
/// ```
/// # async fn example(client: &keel_client::Client) -> Result<(), keel_client::ClientError> {
/// let answer = client.read("orders", 0, 0, 100, None).await?;
/// for record in answer.value().records {
///     println!("{} {}", record.offset, record.event.get());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Answer<K: Decode> {
    status: StatusCode,
    body: Vec<u8>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Decode> Answer<K> {
    /// Checks that `reply` decodes as `K`.
    pub(crate) fn decode(reply: Reply) -> Result<Self, ClientError> {
        serde_json::from_slice::<K::Value<'_>>(&reply.body)
            .map_err(|error| ClientError::unexpected(&error))?;
        Ok(Self {
            status: reply.status,
            body: reply.body,
            kind: PhantomData,
        })
    }

    /// The answer, decoded (it was checked to decode when received).
    pub fn value(&self) -> K::Value<'_> {
        serde_json::from_slice(&self.body).expect("the body was checked to decode when received")
    }

    /// The body decoded as another type than `K`: a part of it, or a `serde_json::Value`
    /// that keeps members `K` does not know.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|error| ClientError::unexpected(&error))
    }

    /// The HTTP status: 200, or 201 for a create that created.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body, as the server wrote it.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, as the server wrote it, without a copy.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// Implements [`Decode`] for answer types that own their data.
macro_rules! decode_owned {
    ($($type:ty),* $(,)?) => {
        $(impl Decode for $type {
            type Value<'a> = $type;
        })*
    };
}

/// Implements [`Decode`] for answer types that borrow from the body.
macro_rules! decode_borrowed {
    ($($type:ident),* $(,)?) => {
        $(impl Decode for $type<'static> {
            type Value<'a> = $type<'a>;
        })*
    };
}

use keel_api::alerts::{AlertList, AlertStatus};
use keel_api::cluster::ClusterStatus;
use keel_api::dead_letters::{Entry, EntryPage, Purged, Redriven};
use keel_api::health::{Readiness, Tasks};
use keel_api::publish::PublishResults;
use keel_api::pull::{AckResult, Pulled};
use keel_api::read::Records;
use keel_api::state::{KeyState, StateList};
use keel_api::subscriptions::{
    CreatedSubscription, RotatedSecret, SubscriptionInfo, SubscriptionList,
};
use keel_api::tokens::{CreatedToken, TokenList};
use keel_api::topics::{TopicInfo, TopicList};

decode_owned!(
    Readiness,
    Tasks,
    TopicInfo,
    TopicList,
    PublishResults,
    CreatedSubscription,
    SubscriptionInfo,
    SubscriptionList,
    RotatedSecret,
    AckResult,
    Redriven,
    Purged,
    AlertStatus,
    AlertList,
    ClusterStatus,
    CreatedToken,
    TokenList,
    serde_json::Value,
);
decode_borrowed!(Records, Pulled, Entry, EntryPage, KeyState, StateList);

/// Settings of a [`Client`]: timeouts and the connection pool.
///
/// ```
/// use std::time::Duration;
///
/// let client = keel_client::Client::builder("http://127.0.0.1:7171")
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(40))
///     .build()?;
/// # Ok::<(), keel_client::ClientError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    server: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_connections_max: usize,
    /// `Bearer <token>`, marked sensitive (left out of `Debug`); `Err` for a token that is
    /// not a header value.
    authorization: Option<Result<reqwest::header::HeaderValue, ()>>,
    /// PEM certificates of CAs trusted besides the system's (a keel behind a private CA).
    ca_pem: Option<Vec<u8>>,
}

impl ClientBuilder {
    /// The API token every request carries (`Authorization: Bearer`); a server with auth on
    /// needs one.
    pub fn token(mut self, token: &str) -> Self {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"));
        self.authorization = Some(value.map_err(|_| ()).map(|mut value| {
            value.set_sensitive(true);
            value
        }));
        self
    }

    /// How long connecting may take before the server counts as unreachable (default
    /// [`CONNECT_TIMEOUT_MS`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request may take, answer included (default [`REQUEST_TIMEOUT_MS`]). Keep
    /// it above the longest long poll you ask for (`wait` of a read or pull).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Idle connections kept for reuse (default [`IDLE_CONNECTIONS_MAX`]); a caller that
    /// keeps n requests in flight wants n.
    pub fn idle_connections_max(mut self, count: usize) -> Self {
        self.idle_connections_max = count;
        self
    }

    /// Trusts the CA certificates of `pem` (one or more PEM certificates) for an `https://`
    /// server, besides the system's roots: a keel whose certificate a private CA signed.
    pub fn ca_certificates(mut self, pem: &[u8]) -> Self {
        self.ca_pem = Some(pem.to_vec());
        self
    }

    /// The client; fails when the server URL is not an `http(s)://` URL.
    pub fn build(self) -> Result<Client, ClientError> {
        let base = base_url(&self.server)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(authorization) = self.authorization.clone() {
            let value = authorization.map_err(|()| ClientError::InvalidToken)?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder();
        if let Some(pem) = &self.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|certificates| !certificates.is_empty())
                .ok_or(ClientError::InvalidCaCertificates)?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .default_headers(headers)
            .pool_max_idle_per_host(self.idle_connections_max)
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .build()
            .map_err(|error| ClientError::Transport {
                server: self.server.clone(),
                detail: error_chain(&error),
            })?;
        Ok(Client {
            http,
            base,
            server: self.server.clone(),
            settings: self,
        })
    }
}

/// A client of one keel server. Cheap to clone: clones share the connection pool.
///
/// Its typed calls (topics, publish, read, subscriptions, pull and settle, dead letters,
/// state) are grouped by what they act on in this crate's modules; [`Client::send`] reaches
/// any other path.
///
/// ```no_run
/// # async fn example() -> Result<(), keel_client::ClientError> {
/// use keel_api::topics::TopicSettings;
///
/// let client = keel_client::Client::new("http://127.0.0.1:7171")?;
/// let settings = TopicSettings { partitions: Some(4), ..TopicSettings::default() };
/// client.create_topic("orders", &settings).await?;
/// let topic = client.describe_topic("orders").await?.value();
/// assert_eq!(topic.partitions.len(), 4);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    server: String,
    /// What it was built with, for [`Client::for_server`].
    settings: ClientBuilder,
}

impl Client {
    /// A client of `server` (`http://host:port`; a bare `host:port` is taken as http) with
    /// the default timeouts.
    pub fn new(server: &str) -> Result<Self, ClientError> {
        Self::builder(server).build()
    }

    /// Settings for a client of `server`, to change before [`ClientBuilder::build`].
    pub fn builder(server: &str) -> ClientBuilder {
        ClientBuilder {
            server: server.to_owned(),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            idle_connections_max: IDLE_CONNECTIONS_MAX,
            authorization: None,
            ca_pem: None,
        }
    }

    /// A client of another server with this one's settings (its token, timeouts and pool):
    /// another node of a cluster.
    pub fn for_server(&self, server: &str) -> Result<Client, ClientError> {
        ClientBuilder {
            server: server.to_owned(),
            ..self.settings.clone()
        }
        .build()
    }

    /// The server URL as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The URL of the API path made of `segments` (each percent-encoded, so a name never
    /// escapes its segment) and `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base_url accepts only http(s) URLs, which have a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    /// Sends one request to the API path `segments` with `query` and reads the whole answer;
    /// a non-2xx status becomes [`ClientError::Problem`]. The typed calls all go through
    /// here; use it for paths they do not cover (`/healthz`, `/metrics`).
    ///
    /// ```no_run
    /// # async fn example(client: &keel_client::Client) -> Result<(), keel_client::ClientError> {
    /// let metrics = client.send(keel_client::Method::GET, &["metrics"], &[], None).await?;
    /// println!("{}", String::from_utf8_lossy(&metrics.body));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Reply, ClientError> {
        self.send_accepting(method, segments, query, body, &[])
            .await
    }

    /// [`Client::send`], with the non-2xx statuses in `accepted` answered as replies, not
    /// errors (`/readyz` explains a 503 in its body).
    pub(crate) async fn send_accepting(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
        accepted: &[StatusCode],
    ) -> Result<Reply, ClientError> {
        let mut request = self.http.request(method, self.url(segments, query));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, body.content_type)
                .body(body.bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;
        if !status.is_success() && !accepted.contains(&status) {
            return Err(problem_error(status, &headers, &bytes));
        }
        Ok(Reply {
            status,
            body: bytes.into(),
        })
    }

    /// [`Client::send`], its answer checked to decode as `K`.
    pub(crate) async fn call<K: Decode>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Answer<K>, ClientError> {
        Answer::decode(self.send(method, segments, query, body).await?)
    }

    fn transport_error(&self, error: &reqwest::Error) -> ClientError {
        let server = self.server.clone();
        if error.is_connect() {
            ClientError::Unreachable { server }
        } else if error.is_timeout() {
            ClientError::Timeout {
                server,
                detail: error_chain(error),
            }
        } else {
            ClientError::Transport {
                server,
                detail: error_chain(error),
            }
        }
    }
}

/// Parses a server URL into a base URL; `host:port` without a scheme means `http://host:port`.
fn base_url(server: &str) -> Result<Url, ClientError> {
    let invalid = |detail: String| ClientError::InvalidUrl {
        url: server.to_owned(),
        detail,
    };
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let url = Url::parse(&with_scheme).map_err(|error| invalid(error.to_string()))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(invalid(format!("scheme {scheme:?} is not http"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn url_encodes_segments_under_the_base_path() {
        // Goal: names never escape their path segment; a base path prefix is kept.
        let client = Client::new("http://example.test:7171/prefix/").unwrap();
        let url = client.url(&["v1", "topics", "a b/c"], &[("from", "3"), ("max", "10")]);
        assert_eq!(
            url.as_str(),
            "http://example.test:7171/prefix/v1/topics/a%20b%2Fc?from=3&max=10"
        );
        let bare = Client::new("127.0.0.1:7171").unwrap();
        assert_eq!(
            bare.url(&["healthz"], &[]).as_str(),
            "http://127.0.0.1:7171/healthz"
        );
    }

    #[test]
    fn non_http_server_url_is_refused() {
        // Goal: a typo'd scheme fails at once, naming the problem.
        let error = Client::new("ftp://example.test").unwrap_err();
        assert!(error.to_string().contains("not http"), "{error}");
    }

    #[test]
    fn answer_keeps_the_body_and_refuses_a_wrong_shape() {
        // Goal: a success answer of the wrong shape is an error on receipt, not a panic later.
        let reply = |body: &str| Reply {
            status: StatusCode::OK,
            body: body.as_bytes().to_vec(),
        };
        let good = r#"{"redriven":3}"#;
        let answer = Answer::<Redriven>::decode(reply(good)).unwrap();
        assert_eq!(
            (answer.value().redriven, answer.body()),
            (3, good.as_bytes())
        );
        let error = Answer::<Redriven>::decode(reply(r#"{"x":1}"#)).unwrap_err();
        assert!(matches!(error, ClientError::Unexpected { .. }), "{error}");
    }
}
