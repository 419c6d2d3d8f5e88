//! OpenTelemetry semantic convention names we emit (HTTP, `GenAI`, resource), and cost-probe's own
//! under `cost_probe.*`. Names checked against open-telemetry/semantic-conventions.

pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const URL_PATH: &str = "url.path";
pub const URL_SCHEME: &str = "url.scheme";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";
pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const NETWORK_TRANSPORT: &str = "network.transport";
pub const ERROR_TYPE: &str = "error.type";

pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const GEN_AI_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const GEN_AI_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";

pub const SERVICE_NAME: &str = "service.name";
pub const HOST_NAME: &str = "host.name";
pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";
pub const PROCESS_COMMAND_LINE: &str = "process.command_line";
pub const K8S_POD_UID: &str = "k8s.pod.uid";
pub const CONTAINER_ID: &str = "container.id";
pub const CONTAINER_RUNTIME: &str = "container.runtime.name";

/// The SDKs' cardinality-limit marker: the series that takes every attribute set past the limit.
pub const OTEL_METRIC_OVERFLOW: &str = "otel.metric.overflow";

/// `gen_ai.operation.name` from the endpoint an OpenAI-compatible, llama.cpp or Ollama server
/// answered; `None` when the path says nothing we know.
#[must_use]
pub fn operation(path: &str) -> Option<&'static str> {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") || p == "/api/chat" {
        Some("chat")
    } else if p.ends_with("/completions") || p.ends_with("/completion") || p == "/api/generate" {
        Some("text_completion")
    } else if p.ends_with("/embeddings") || p.ends_with("/embedding") || p == "/api/embed" {
        Some("embeddings")
    } else {
        None
    }
}

/// Histogram boundaries the conventions advise.
pub mod buckets {
    /// `http.server.request.duration`, seconds.
    pub const HTTP_DURATION: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
    /// `gen_ai.server.request.duration`, seconds.
    pub const GEN_AI_DURATION: &[f64] = &[
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ];
    /// `gen_ai.server.time_to_first_token`, seconds.
    pub const TTFT: &[f64] = &[
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];
    /// `gen_ai.client.token.usage`, tokens.
    pub const TOKENS: &[f64] = &[
        1.0,
        4.0,
        16.0,
        64.0,
        256.0,
        1024.0,
        4096.0,
        16384.0,
        65536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
    ];
    /// `cost_probe.request.energy`, joules (a tiny HTTP request to a long generation).
    pub const ENERGY: &[f64] = &[
        0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_of_the_servers_we_price() {
        for (path, op) in [
            ("/v1/chat/completions", Some("chat")),
            ("/chat/completions", Some("chat")),
            ("/api/chat", Some("chat")),
            ("/v1/completions", Some("text_completion")),
            ("/completion", Some("text_completion")),
            ("/api/generate", Some("text_completion")),
            ("/v1/embeddings", Some("embeddings")),
            ("/embedding", Some("embeddings")),
            ("/health", None),
            ("/", None),
        ] {
            assert_eq!(operation(path), op, "{path}");
        }
    }
}
