//! Traces across processes: `tessera run`, the coordinator and the agents each turn their
//! `tracing` spans into OpenTelemetry spans and export them over OTLP/gRPC when given an
//! endpoint, and the W3C trace context (`traceparent`, `tracestate`) travels with the work so
//! that one job's spans in all three processes form one tree.
//!
//! - [`export`]: the layer to add to a process's subscriber, exporting to an OTLP endpoint
//!   (`http://collector:4317`; `https://` trusts the CA in `OTEL_EXPORTER_OTLP_CERTIFICATE`);
//!   [`shutdown`] flushes what is left before the process exits.
//! - [`inject`] for clients (every call of a [`crate::client::Link`] carries the caller's
//!   span), [`GrpcSpanLayer`] for servers (one
//!   span per call, the child of the caller's).
//! - [`carry`] and [`adopt`]: the context as a plain map, for hops that are not a gRPC call
//!   (a coordinator hands an agent its lease inside a long-lived stream).
//!
//! Without an endpoint none of this exports anything and the context is empty: spans stay
//! `tracing` spans, logged as before.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use thiserror::Error;
use tokio::runtime::Handle;
use tonic::codegen::{Service, http};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Instrument;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

use crate::client::{ClientAuth, ClientError};

/// How long one export may take before it is abandoned (the spans are dropped, not retried).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's tracer provider, once [`export`] has set one up; [`shutdown`] flushes it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why the OTLP exporter could not be set up.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The endpoint URL or its TLS files are unusable.
    #[error("OTLP endpoint: {0}")]
    Endpoint(#[from] ClientError),
    /// The exporter refused its configuration.
    #[error("OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What the exporter said.
        reason: String,
    },
    /// [`export`] was called twice in one process.
    #[error("the OTLP exporter is already set up in this process")]
    AlreadySet,
}

/// The layer that exports this process's spans to the OTLP collector at `endpoint`, as
/// `service` (`tessera-coordinator`, `tessera-agent`, `tessera-cli`; `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` add to or override it, as everywhere in OpenTelemetry). Spans
/// are batched (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s) and sent from the current Tokio
/// runtime, which must outlive them: call [`shutdown`] before it ends.
pub fn export<S>(
    service: &str,
    endpoint: &str,
) -> Result<OpenTelemetryLayer<S, SdkTracer>, TraceError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let auth = ClientAuth {
        tls_ca: std::env::var_os("OTEL_EXPORTER_OTLP_CERTIFICATE").map(Into::into),
        client_cert: std::env::var_os("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE").map(Into::into),
        client_key: std::env::var_os("OTEL_EXPORTER_OTLP_CLIENT_KEY").map(Into::into),
        token: None,
    };
    let channel = crate::client::endpoint(endpoint, &auth)?
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .build()
        .map_err(|error| TraceError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: error.to_string(),
        })?;
    let exporter = OnRuntime {
        exporter: Arc::new(exporter),
        runtime: Handle::current(),
    };
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("tessera");
    PROVIDER.set(provider).map_err(|_| TraceError::AlreadySet)?;
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans not yet exported and stops the exporter; nothing when [`export`] was never
/// called. Waits at most a few seconds for an unreachable collector.
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    let provider = provider.clone();
    // The batch thread blocks until its last export, which runs on this runtime: wait for it
    // from a blocking thread, never from a runtime worker.
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(error)) = flushed {
        tracing::warn!(%error, "could not flush the last spans to the OTLP collector");
    }
}

/// The OTLP exporter run on a Tokio runtime: the SDK's batch processor exports from its own
/// thread, and tonic's connections live on Tokio, so each export is spawned there and awaited.
#[derive(Debug)]
struct OnRuntime {
    exporter: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exporter = Arc::clone(&self.exporter);
        match self
            .runtime
            .spawn(async move { exporter.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(error) => Err(OTelSdkError::InternalFailure(format!(
                "the export task failed: {error}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

/// The current span's trace context as a map (`traceparent`, and `tracestate` when set):
/// empty when the span is not exported.
pub fn carry() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier
}

/// Makes `span` a child of the context in `carrier` (from [`carry`] in another process); a
/// missing or malformed context leaves `span` a root.
pub fn adopt(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    // Fails only when the span is disabled or already started; either way it stays a root.
    let _ = span.set_parent(parent);
}

/// Adds the current span's trace context to a call's metadata (nothing when not exported).
pub fn inject(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Writes W3C trace context headers into gRPC metadata.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads W3C trace context headers from an HTTP request.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A tower layer for a gRPC server: when this process exports spans ([`export`]), each call
/// runs in a span named after its method (`build.bazel.remote.execution.v2.Execution/Execute`
/// becomes `Execution/Execute`), the child of the caller's span when the call carries a trace
/// context.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcSpanLayer;

impl<S> tower_layer::Layer<S> for GrpcSpanLayer {
    type Service = GrpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcSpan { inner }
    }
}

/// The service of [`GrpcSpanLayer`].
#[derive(Debug, Clone)]
pub struct GrpcSpan<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcSpan<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if PROVIDER.get().is_none() {
            // Not exported: no span, so nothing is spent on it and the logs stay as they were.
            return self.inner.call(request).instrument(tracing::Span::none());
        }
        let (service, method) = grpc_method(request.uri().path());
        let span = tracing::info_span!(
            "grpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
        self.inner.call(request).instrument(span)
    }
}

/// The short service name and the method of a gRPC path (`/pkg.Service/Method`).
fn grpc_method(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    (service, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_path_names_the_short_service_and_the_method() {
        assert_eq!(
            grpc_method("/build.bazel.remote.execution.v2.Execution/Execute"),
            ("Execution", "Execute")
        );
        assert_eq!(
            grpc_method("/google.bytestream.ByteStream/Read"),
            ("ByteStream", "Read")
        );
        assert_eq!(grpc_method("/odd"), ("odd", ""));
    }

    #[test]
    fn without_an_exporter_the_context_is_empty_and_adopting_it_is_harmless() {
        let span = tracing::info_span!("unexported");
        let _entered = span.enter();
        assert!(carry().is_empty());
        let mut metadata = MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.is_empty());
        adopt(&span, &HashMap::new());
        adopt(
            &span,
            &HashMap::from([("traceparent".to_owned(), "garbage".to_owned())]),
        );
    }
}
