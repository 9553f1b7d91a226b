//! The checks in front of every route of the node's listener: [`FrontLayer`].
//!
//! Each request passes, in this order:
//! 1. the TLS policy: on a TLS node, a request that came in plaintext is answered
//!    FAILED_PRECONDITION, one without the client certificate `client_cert_auth` asks for
//!    UNAUTHENTICATED, each with a message saying what is missing (not counted in the metrics);
//! 2. the path filter: a path the node does not serve is answered UNIMPLEMENTED with a message
//!    naming the method (tonic's own answer for an unknown method carries none);
//! 3. `grpc_server_handled_total`, when the node records metrics ([`crate::metrics`]): counted once
//!    per RPC when its response body ends or is dropped.
//!
//! A hand-written layer rather than two `axum::middleware::from_fn`: those box the next service
//! and the future on every request. At 100 closed-loop clients, routing and layers fell from
//! 8.0 % to 3.1-4.2 % of the leader's CPU samples, and the servers' CPU per put measured 0.98x
//! (BENCHMARKS.md, "The layer in front of the routes"). Here a request that passes costs two
//! comparisons and, with metrics, the counter.
//!
//! Invariant: every request reaches the inner service, or gets exactly one answer made here;
//! never both.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;

/// Which gRPC paths the server serves; every other path is answered UNIMPLEMENTED with the
/// message `unimplemented` makes (tonic's own answer for an unknown method carries none).
#[derive(Clone, Copy, Debug)]
pub struct PathFilter {
    pub served: fn(&str) -> bool,
    pub unimplemented: fn(&str) -> String,
}

impl PathFilter {
    /// Only this node's own services (`raftlog.v1`).
    pub const RAFT_ONLY: PathFilter = PathFilter {
        served: |path| path.starts_with("/raftlog.v1."),
        unimplemented: |path| {
            format!(
                "rust-raft-log does not implement {}",
                path.trim_start_matches('/')
            )
        },
    };
}

/// What a TLS node asks of every connection before any service sees a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlsPolicy {
    /// The port is TLS: a plaintext connection (crate::grpc::tls lets a plaintext HTTP/2 client
    /// in only to tell it so) is refused.
    pub(crate) tls: bool,
    /// `tls.client_cert_auth`: a connection without a verified client certificate is refused.
    pub(crate) client_cert: bool,
}

impl TlsPolicy {
    /// The answer refusing `request`, or `None` if the policy lets it through.
    fn refusal(self, request: &axum::extract::Request) -> Option<axum::response::Response> {
        if !self.tls {
            return None;
        }
        let conn = request.extensions().get::<crate::grpc::tls::ConnInfo>();
        if !conn.is_some_and(|c| c.tls) {
            return Some(
                Status::failed_precondition(
                    "this node serves TLS only: connect with https:// (etcdctl: --cacert with \
                     the cluster's CA)",
                )
                .into_http::<axum::body::Body>(),
            );
        }
        if !self.client_cert || conn.is_some_and(|c| c.client_cert) {
            return None;
        }
        Some(
            Status::unauthenticated(
                "client certificate required: this node has tls.client_cert_auth on (etcdctl: \
                 --cert and --key, with a certificate of the configured CA)",
            )
            .into_http::<axum::body::Body>(),
        )
    }
}

/// The layer (`axum::Router::layer`): wraps every route, and the fallback, in a [`Front`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrontLayer {
    pub(crate) policy: TlsPolicy,
    pub(crate) filter: PathFilter,
}

impl<S> tower_layer::Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            policy: self.policy,
            filter: self.filter,
        }
    }
}

/// One route behind the checks of the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Front<S> {
    inner: S,
    policy: TlsPolicy,
    filter: PathFilter,
}

impl<S> tower_service::Service<axum::extract::Request> for Front<S>
where
    S: tower_service::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        if let Some(refusal) = self.policy.refusal(&request) {
            return FrontFuture::answered(refusal, None);
        }
        let path = request.uri().path();
        let served = (self.filter.served)(path);
        let counted = crate::metrics::current().map(|m| HandledCounter::new(m, &request, served));
        if !served {
            tracing::debug!(%path, "unimplemented gRPC method");
            let answer = Status::unimplemented((self.filter.unimplemented)(path))
                .into_http::<axum::body::Body>();
            return FrontFuture::answered(answer, counted);
        }
        // The service polled ready is the one called (tower's contract); the clone stays for the
        // next request.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        FrontFuture {
            state: State::Inner {
                future: ready.call(request),
            },
            counted,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Front`]'s answer: the inner service's, or one made here; counted on the way out.
    pub(crate) struct FrontFuture<F> {
        #[pin]
        state: State<F>,
        counted: Option<HandledCounter>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] future: F },
        Answered { answer: Option<axum::response::Response> },
    }
}

impl<F> FrontFuture<F> {
    fn answered(answer: axum::response::Response, counted: Option<HandledCounter>) -> Self {
        FrontFuture {
            state: State::Answered {
                answer: Some(answer),
            },
            counted,
        }
    }
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<axum::response::Response, Infallible>>,
{
    type Output = Result<axum::response::Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.state.project() {
            StateProj::Inner { future } => match future.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
            },
            // Polled again after Ready: an empty answer rather than a panic (never happens
            // under hyper, which drops a future once it is ready).
            StateProj::Answered { answer } => answer.take().unwrap_or_default(),
        };
        Poll::Ready(Ok(match this.counted.take() {
            None => response,
            Some(counter) => counted(response, counter),
        }))
    }
}

/// `response` with its RPC's count attached: the grpc-status of a trailers-only answer (every
/// error tonic makes before the body) now, otherwise the trailers' at the body's end.
fn counted(
    response: axum::response::Response,
    mut counter: HandledCounter,
) -> axum::response::Response {
    counter.code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (parts, body) = response.into_parts();
    axum::response::Response::from_parts(
        parts,
        axum::body::Body::new(CountedBody {
            inner: body,
            counter,
        }),
    )
}

/// One RPC's `grpc_server_handled_total` count, made once when its response body is done (or
/// dropped: a client that went away counts as `Canceled`, as in go-grpc-prometheus).
struct HandledCounter {
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// The request's path (`/service/method`); shares the request's bytes.
    path: http::uri::PathAndQuery,
    /// The path is one the node serves: its counters are kept in [`HANDLED`]. Others (a client
    /// may send any path) are looked up each time, so the cache cannot be grown from outside.
    served: bool,
    /// The numeric grpc-status once known.
    code: Option<u8>,
}

/// The counters of `grpc_server_handled_total` already looked up on this thread: for the metrics
/// installed here ([`crate::metrics::current`] is per thread too), per served path, one per
/// code slot ([`code_slot`]). Labels are built and the family searched once per path and code,
/// not once per RPC (with metrics on, that was 1.4-1.9 % of a leader's CPU at 100 clients:
/// BENCHMARKS.md, "Where the CPU per put goes, by layer").
#[derive(Default)]
struct HandledCache {
    owner: std::sync::Weak<crate::metrics::NodeMetrics>,
    by_path: std::collections::HashMap<Box<str>, [Option<Counter>; CODE_SLOTS]>,
}

type Counter = prometheus_client::metrics::counter::Counter;

/// gRPC's codes 0-16; anything else counts as `Unknown` (2), a body that never ended as
/// `Canceled` (1), as their labels say ([`grpc_code_name`]).
const CODE_SLOTS: usize = 17;

fn code_slot(code: Option<u8>) -> usize {
    match code {
        None => 1,
        Some(code) if usize::from(code) < CODE_SLOTS => usize::from(code),
        Some(_) => 2,
    }
}

thread_local! {
    static HANDLED: std::cell::RefCell<HandledCache> = std::cell::RefCell::default();
}

impl HandledCounter {
    fn new(
        metrics: Arc<crate::metrics::NodeMetrics>,
        request: &axum::extract::Request,
        served: bool,
    ) -> HandledCounter {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        HandledCounter {
            metrics,
            path,
            served,
            code: None,
        }
    }

    /// The family's counter for this RPC's labels (built here: the slow path).
    fn look_up(&self) -> Counter {
        let path = self.path.path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let grpc_type = match method {
            "AppendEntriesStream" | "ProposeStream" => "bidi_stream",
            "InstallSnapshot" => "client_stream",
            "Snapshot" => "server_stream",
            _ => "unary",
        };
        let code = self.code.map_or("Canceled", grpc_code_name);
        let labels = vec![
            ("grpc_type".to_string(), grpc_type.to_string()),
            ("grpc_service".to_string(), service.to_string()),
            ("grpc_method".to_string(), method.to_string()),
            ("grpc_code".to_string(), code.to_string()),
        ];
        self.metrics
            .grpc_server_handled
            .get_or_create(&labels)
            .clone()
    }
}

impl Drop for HandledCounter {
    fn drop(&mut self) {
        if !self.served {
            self.look_up().inc();
            return;
        }
        let slot = code_slot(self.code);
        let path = self.path.path();
        HANDLED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if !std::ptr::eq(cache.owner.as_ptr(), Arc::as_ptr(&self.metrics)) {
                *cache = HandledCache {
                    owner: Arc::downgrade(&self.metrics),
                    by_path: Default::default(),
                };
            }
            if let Some(counter) = cache
                .by_path
                .get(path)
                .and_then(|slots| slots[slot].as_ref())
            {
                counter.inc();
                return;
            }
            // A miss: the labels are built once, and the path's key allocated once.
            cache.by_path.entry(Box::from(path)).or_default()[slot]
                .get_or_insert_with(|| self.look_up())
                .inc();
        });
    }
}

/// go-grpc-prometheus's code names (Go's `codes.Code.String()`).
fn grpc_code_name(code: u8) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A response body that reads the grpc-status of the trailers as they pass.
struct CountedBody {
    inner: axum::body::Body,
    counter: HandledCounter,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame
                .trailers_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
            {
                self.counter.code = Some(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// A route that counts its calls and answers with a header saying it answered.
    #[derive(Clone)]
    struct Route(Arc<AtomicUsize>);

    impl Service<axum::extract::Request> for Route {
        type Response = axum::response::Response;
        type Error = Infallible;
        type Future = std::future::Ready<Result<axum::response::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: axum::extract::Request) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            let mut response = axum::response::Response::default();
            response
                .headers_mut()
                .insert("x-answered-by", http::HeaderValue::from_static("route"));
            std::future::ready(Ok(response))
        }
    }

    const ONLY_A: PathFilter = PathFilter {
        served: |path| path.starts_with("/a."),
        unimplemented: |path| format!("no {path} here"),
    };

    /// Sends one request for `path` (with `conn` as its connection's facts, if any) through a
    /// [`Front`] with `policy`; returns the answer and how often the route was called.
    fn send(
        policy: TlsPolicy,
        path: &str,
        conn: Option<crate::grpc::tls::ConnInfo>,
    ) -> (axum::response::Response, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut front = FrontLayer {
            policy,
            filter: ONLY_A,
        }
        .layer(Route(Arc::clone(&calls)));
        let mut request = axum::extract::Request::new(axum::body::Body::empty());
        *request.uri_mut() = path.parse().expect("a test path");
        if let Some(conn) = conn {
            request.extensions_mut().insert(conn);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let answer = runtime.block_on(async {
            std::future::poll_fn(|cx| front.poll_ready(cx))
                .await
                .expect("infallible");
            front.call(request).await.expect("infallible")
        });
        (answer, calls.load(Ordering::SeqCst))
    }

    fn header<'a>(response: &'a axum::response::Response, name: &str) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    const PLAINTEXT: TlsPolicy = TlsPolicy {
        tls: false,
        client_cert: false,
    };

    #[test]
    fn a_served_path_reaches_its_route_and_gets_the_routes_answer() {
        let (answer, calls) = send(PLAINTEXT, "/a.Service/Method", None);
        assert_eq!(calls, 1);
        assert_eq!(header(&answer, "x-answered-by"), Some("route"));
    }

    #[test]
    fn a_path_not_served_is_answered_unimplemented_with_its_name_and_never_reaches_a_route() {
        let (answer, calls) = send(PLAINTEXT, "/b.Service/Method", None);
        assert_eq!(calls, 0);
        assert_eq!(header(&answer, "grpc-status"), Some("12"));
        assert_eq!(
            header(&answer, "grpc-message"),
            Some("no%20/b.Service/Method%20here")
        );
    }

    /// `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` of `metrics` (unary).
    fn handled(
        metrics: &crate::metrics::NodeMetrics,
        service: &str,
        method: &str,
        code: &str,
    ) -> u64 {
        let labels = vec![
            ("grpc_type".to_string(), "unary".to_string()),
            ("grpc_service".to_string(), service.to_string()),
            ("grpc_method".to_string(), method.to_string()),
            ("grpc_code".to_string(), code.to_string()),
        ];
        metrics.grpc_server_handled.get_or_create(&labels).get()
    }

    #[test]
    fn every_rpc_is_counted_once_under_its_own_metrics_whether_its_counter_was_cached_or_not() {
        let dir = std::env::temp_dir();
        let first = Arc::new(crate::metrics::NodeMetrics::new(&dir));
        let second = Arc::new(crate::metrics::NodeMetrics::new(&dir));
        crate::metrics::install(Some(Arc::clone(&first)));
        // The route's answer has no grpc-status and its body is dropped unread: Canceled.
        for _ in 0..3 {
            send(PLAINTEXT, "/a.Service/Method", None);
        }
        send(PLAINTEXT, "/a.Service/Other", None);
        send(PLAINTEXT, "/b.Service/Method", None);
        send(PLAINTEXT, "/b.Service/Method", None);
        // Another node's metrics on the same thread (in-process clusters): its own counts, not
        // the first one's cached counters.
        crate::metrics::install(Some(Arc::clone(&second)));
        send(PLAINTEXT, "/a.Service/Method", None);
        crate::metrics::install(Some(Arc::clone(&first)));
        send(PLAINTEXT, "/a.Service/Method", None);
        crate::metrics::install(None);

        assert_eq!(handled(&first, "a.Service", "Method", "Canceled"), 4);
        assert_eq!(handled(&first, "a.Service", "Other", "Canceled"), 1);
        assert_eq!(handled(&first, "b.Service", "Method", "Unimplemented"), 2);
        assert_eq!(handled(&second, "a.Service", "Method", "Canceled"), 1);
        assert_eq!(handled(&second, "b.Service", "Method", "Unimplemented"), 0);
        // Unserved paths are never cached (a client could send any number of them).
        HANDLED.with(|cache| {
            let cache = cache.borrow();
            assert!(cache.by_path.contains_key("/a.Service/Method"));
            assert!(!cache.by_path.contains_key("/b.Service/Method"));
        });
    }

    #[test]
    fn a_tls_node_refuses_plaintext_and_missing_client_certificates_before_the_filter() {
        let policy = TlsPolicy {
            tls: true,
            client_cert: true,
        };
        let conn = |tls, client_cert| crate::grpc::tls::ConnInfo {
            remote: None,
            tls,
            client_cert,
            member: None,
        };
        // Plaintext: FAILED_PRECONDITION, even for a path the filter would refuse.
        for path in ["/a.Service/Method", "/b.Service/Method"] {
            let (answer, calls) = send(policy, path, Some(conn(false, false)));
            assert_eq!((header(&answer, "grpc-status"), calls), (Some("9"), 0));
        }
        let (answer, calls) = send(policy, "/a.Service/Method", None);
        assert_eq!((header(&answer, "grpc-status"), calls), (Some("9"), 0));
        // TLS without the client certificate: UNAUTHENTICATED.
        let (answer, calls) = send(policy, "/a.Service/Method", Some(conn(true, false)));
        assert_eq!((header(&answer, "grpc-status"), calls), (Some("16"), 0));
        // Both: through.
        let (answer, calls) = send(policy, "/a.Service/Method", Some(conn(true, true)));
        assert_eq!(header(&answer, "x-answered-by"), Some("route"));
        assert_eq!(calls, 1);
    }
}
