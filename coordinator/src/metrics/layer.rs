//! The gRPC metrics layer: counts every call in `tessera_grpc_requests_total{service,method,
//! code}` and times it in `tessera_grpc_request_duration_seconds{service,method}`.
//!
//! A call is counted when its response head is ready, with the code in the head's
//! `grpc-status` header (tonic answers a failed unary call, and any refusal, "trailers-only",
//! with the status in the head) or `OK` when the head has none. So unary calls are counted
//! with their real code; a streaming call that fails after its head (the status then comes in
//! the trailers) is counted `OK`, and its duration is the time to its first response head,
//! not the stream's length. Placed outside the auth layer, so refused calls are counted too.
//!
//! With recording off ([`super::set_recording`], for the benchmark) a call goes straight to the
//! inner service: no label lookup, no clock, no boxed future.

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{BoxFuture, Either};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;

use super::{Metrics, code_name, grpc_labels, recording};

/// Installs [`Metered`] in front of the services.
#[derive(Clone, Copy, Debug)]
pub struct MetricsLayer {
    metrics: &'static Metrics,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: &'static Metrics) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.metrics,
        }
    }
}

/// A service behind [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    metrics: &'static Metrics,
}

/// The canonical code name in a response head: its `grpc-status`, or `OK` without one.
pub fn head_code<B>(response: &http::Response<B>) -> &'static str {
    match response.headers().get("grpc-status") {
        None => "OK",
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .map(|v| code_name(tonic::Code::from_i32(v)))
            .unwrap_or("UNKNOWN"),
    }
}

impl<S, B> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    /// `Left`: passed straight through (recording off); `Right`: counted and timed.
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !recording() {
            return Either::Left(self.inner.call(request));
        }
        let (service, method) = grpc_labels(request.uri().path());
        let metrics = self.metrics;
        let started = Instant::now();
        // The service that was made ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(request);
        Either::Right(Box::pin(async move {
            let response = call.await;
            let code = match &response {
                Ok(response) => head_code(response),
                // The transport failed the call: no gRPC status reached the client.
                Err(_) => "UNKNOWN",
            };
            metrics
                .grpc_requests
                .get_or_create(&vec![
                    ("service", service),
                    ("method", method),
                    ("code", code),
                ])
                .inc();
            metrics
                .grpc_duration
                .get_or_create(&vec![("service", service), ("method", method)])
                .observe(started.elapsed().as_secs_f64());
            response
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_comes_from_the_head_or_is_ok() {
        let ok = http::Response::new(());
        assert_eq!(head_code(&ok), "OK");
        let refused = tonic::Status::not_found("no such blob").into_http::<()>();
        assert_eq!(head_code(&refused), "NOT_FOUND");
        let mut odd = http::Response::new(());
        odd.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(head_code(&odd), "UNKNOWN");
    }

    #[tokio::test]
    async fn a_refused_call_is_counted_with_its_code_and_labels() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let service = tower_layer::Layer::layer(
            &MetricsLayer::new(metrics),
            tower_service_fn(|| tonic::Status::permission_denied("no").into_http()),
        );
        let mut service = service;
        for path in ["/tessera.v1.Jobs/Submit", "/evil.Service/Anything"] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            service.call(request).await.unwrap();
        }
        let text = metrics.encode();
        for line in [
            r#"tessera_grpc_requests_total{service="Jobs",method="Submit",code="PERMISSION_DENIED"} 1"#,
            r#"tessera_grpc_requests_total{service="unknown",method="unknown",code="PERMISSION_DENIED"} 1"#,
            r#"tessera_grpc_request_duration_seconds_count{service="Jobs",method="Submit"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    /// The switch is process-wide: this test relies on nextest running each test in its own
    /// process.
    #[tokio::test]
    async fn with_recording_off_calls_pass_through_uncounted() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let mut service = tower_layer::Layer::layer(
            &MetricsLayer::new(metrics),
            tower_service_fn(|| tonic::Status::not_found("no").into_http()),
        );
        let before = metrics.encode();
        crate::metrics::set_recording(false);
        let request = http::Request::builder()
            .uri("/tessera.v1.Jobs/Submit")
            .body(())
            .unwrap();
        let call = service.call(request);
        crate::metrics::set_recording(true);
        assert!(
            matches!(call, Either::Left(_)),
            "not passed straight through"
        );
        let response = call.await.unwrap();
        assert_eq!(head_code(&response), "NOT_FOUND");
        assert_eq!(metrics.encode(), before);
    }

    /// A service answering every request with `respond()`.
    fn tower_service_fn(
        respond: fn() -> http::Response<Body>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>,
    > + Clone
    + Send
    + 'static {
        #[derive(Clone)]
        struct Fixed(fn() -> http::Response<Body>);
        impl Service<http::Request<()>> for Fixed {
            type Response = http::Response<Body>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                std::future::ready(Ok((self.0)()))
            }
        }
        Fixed(respond)
    }
}
