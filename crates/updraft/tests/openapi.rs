//! The management API's OpenAPI description, `GET /v1/openapi.json`, checked
//! against the running server: it needs no key; it is an OpenAPI 3.1
//! document by the official JSON Schema (`fixtures/`); every path and
//! method it documents is served and every other method on those paths is
//! refused with 405, so the document and the router agree (the router is
//! built from the document's own list of routes, and the gateway's unit
//! test keeps routes from being added beside that list); and the API's real
//! answers, successes and errors, have a status the document lists for
//! them and fit the schema it gives, with no field it does not name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// The OpenAPI Initiative's JSON Schema of OpenAPI 3.1 documents
/// (`https://spec.openapis.org/oas/3.1/schema/2022-10-07`; where it came
/// from: `fixtures/README.md`).
const OAS_3_1_SCHEMA: &str = include_str!("fixtures/openapi-3.1-schema-2022-10-07.json");

/// The methods probed on every documented path.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(server: &Server) -> Value {
    // No key: the description is public.
    let response = client()
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_public_and_valid_openapi_3_1() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let doc = document(&server).await;

    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi = {version}");
    let schema: Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not valid OpenAPI 3.1: {errors:#?}");
    // That schema leaves Schema Objects to their dialect: in 3.1, JSON
    // Schema 2020-12.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::meta::is_valid(schema),
            "components.schemas.{name} is not JSON Schema: {schema}"
        );
    }

    // Every /v1 endpoint but the document needs the bearer key.
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{ "api_key": [] }]));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            // The console's page and files are public; what it shows comes
            // from `/v1` with the key its user signs in with.
            let public = path == "/healthz"
                || path == "/v1/openapi.json"
                || path == "/ui"
                || path == "/ui/"
                || path == "/ui/{file}";
            assert_eq!(
                operation.get("security") == Some(&json!([{}])),
                public,
                "{method} {path}: security {:?}",
                operation.get("security")
            );
            if path.starts_with("/v1/") && !public {
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} does not document 401"
                );
            }
        }
    }

    // Without a key, the rest of /v1 stays shut.
    let response = client()
        .get(server.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// A concrete path for a documented one: each `{param}` gets a value that
/// names nothing (a key with a slash, as keys may have).
fn concrete(path: &str) -> String {
    path.replace("{name}", "no-such-fn")
        .replace("{id}", "no-such-id")
        .replace("{container}", "no-such-container")
        .replace("{store}", "no-such-store")
        .replace("{key}", "no/such-key")
        // The console's files are real: any other is its own 404.
        .replace("{file}", "console.css")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_is_served_and_no_other_method() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let doc = document(&server).await;
    let api = server.api();

    // What the API's fallback answers, so that a probe can tell it apart.
    let response = api
        .get(server.url("/v1/no-such-endpoint"))
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "not_found").await;

    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 30, "only {} paths", paths.len());
    let mut probed = 0;
    for (path, item) in paths {
        let url = server.url(&concrete(path));
        for method in METHODS {
            let documented = item.get(method).is_some();
            let request = api.request(
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                &url,
            );
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            if documented {
                probed += 1;
                assert_ne!(status, 405, "{method} {path} is documented but not served");
                let code = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                assert!(
                    !matches!(code.as_deref(), Some("not_found" | "route_not_found")),
                    "{method} {path} is documented but answered by a fallback: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served ({status} {body}) but not documented"
                );
            }
        }
    }
    assert!(probed >= 45, "only {probed} operations");
}

/// The documented answers of `GET`-like calls, checked one by one.
struct Checker<'a> {
    server: &'a Server,
    doc: &'a Value,
    /// The document's components, closed: an object schema that lists its
    /// properties takes no others, so a field the document does not name
    /// fails the check.
    components: Value,
}

impl<'a> Checker<'a> {
    fn new(server: &'a Server, doc: &'a Value) -> Self {
        let mut components = doc["components"].clone();
        // A schema that is a part of an allOf (a flattened struct) stays
        // open: it names only some of the object's fields.
        let mut parts = Vec::new();
        all_of_refs(doc, false, &mut parts);
        for (name, schema) in components["schemas"].as_object_mut().unwrap() {
            if !parts.contains(name) {
                close(schema, false);
            }
        }
        Checker {
            server,
            doc,
            components,
        }
    }

    /// Sends `method path` with the admin key (and `body`, if any); checks
    /// that its status is documented for that operation and that its body
    /// fits that answer's schema; returns the status and the body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        concrete_path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        self.call_as(self.server.api(), method, path, concrete_path, body)
            .await
    }

    async fn call_as(
        &self,
        client: reqwest::Client,
        method: &str,
        path: &str,
        concrete_path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        let mut request = client.request(
            Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
            self.server.url(concrete_path),
        );
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let operation = &self.doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let mut answer = &operation["responses"][status.to_string()];
        if let Some(reference) = answer["$ref"].as_str() {
            let name = reference.trim_start_matches("#/components/responses/");
            answer = &self.doc["components"]["responses"][name];
        }
        assert!(
            answer.is_object(),
            "{method} {path} answered {status}, which it does not document: {text}"
        );
        let content = &answer["content"];
        let streams = content.get("application/x-ndjson").is_some();
        if text.is_empty() && !streams {
            assert!(
                content.is_null(),
                "{method} {path} {status}: an empty body, but documented {content}"
            );
            return (status, Value::Null);
        }
        let (documented_type, schema) = content.as_object().unwrap().iter().next().unwrap();
        let instances: Vec<Value> = match documented_type.as_str() {
            "application/json" => {
                assert_eq!(content_type, "application/json", "{method} {path}");
                vec![serde_json::from_str(&text).unwrap()]
            }
            "application/x-ndjson" => {
                assert_eq!(content_type, "application/x-ndjson", "{method} {path}");
                text.lines()
                    .map(|line| serde_json::from_str(line).unwrap())
                    .collect()
            }
            other => panic!("{method} {path}: not JSON ({other})"),
        };
        let validator = self.validator(&schema["schema"]);
        for instance in &instances {
            let errors: Vec<String> = validator
                .iter_errors(instance)
                .map(|e| format!("{e} (at {})", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {path} {status} does not fit its schema: {errors:#?}\n{instance}"
            );
        }
        (status, instances.into_iter().next().unwrap_or_default())
    }

    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut schema = schema.clone();
        close(&mut schema, false);
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.components,
            "allOf": [schema],
        });
        jsonschema::draft202012::new(&root).unwrap()
    }
}

/// Adds `additionalProperties: false` to every object schema that lists
/// its properties, except those combined with `allOf` (a flattened
/// struct), where each part sees only its own fields.
fn close(schema: &mut Value, in_all_of: bool) {
    match schema {
        Value::Object(map) => {
            if !in_all_of
                && map.contains_key("properties")
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), json!(false));
            }
            for (key, value) in map.iter_mut() {
                // Property names are not schemas' keywords: recurse into
                // each property's schema, not into the map as a schema.
                match key.as_str() {
                    "properties" | "$defs" => {
                        if let Value::Object(props) = value {
                            for prop in props.values_mut() {
                                close(prop, false);
                            }
                        }
                    }
                    "allOf" => close_each(value, true),
                    _ => close(value, false),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                close(item, in_all_of);
            }
        }
        _ => {}
    }
}

/// The names of the component schemas referenced from an allOf.
fn all_of_refs(value: &Value, in_all_of: bool, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if in_all_of && let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.trim_start_matches("#/components/schemas/").to_string());
            }
            for (key, value) in map {
                all_of_refs(value, key == "allOf", out);
            }
        }
        Value::Array(items) => {
            for item in items {
                all_of_refs(item, in_all_of, out);
            }
        }
        _ => {}
    }
}

fn close_each(value: &mut Value, in_all_of: bool) {
    if let Value::Array(items) = value {
        for item in items {
            close(item, in_all_of);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_answers_fit_the_documented_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let doc = document(&server).await;
    let check = Checker::new(&server, &doc);
    // The check can fail: a field the document does not name is refused.
    let error = check.validator(&json!({ "$ref": "#/components/schemas/ErrorBody" }));
    assert!(error.is_valid(&json!({ "error": { "code": "x", "message": "m" } })));
    assert!(!error.is_valid(&json!({ "error": { "code": "x", "message": "m", "extra": 1 } })));
    assert!(!error.is_valid(&json!({ "error": { "code": "x" } })));
    let wasm = std::fs::read(guest("hello-rust")).unwrap();
    let fd = "/v1/functions/{name}";

    check.call("get", "/healthz", "/healthz", None).await;

    // Deploy (raw Wasm), twice for a rollback; info loaded and unloaded.
    let (status, info) = check
        .call(
            "put",
            fd,
            "/v1/functions/hello?route=/hello&key_value_stores=notes",
            Some(("application/wasm", wasm.clone())),
        )
        .await;
    assert_eq!(status, 201, "{info}");
    assert!(info["compiled"].is_boolean(), "{info}");
    let manifest = "name = \"hello\"\nroute = \"/hello2\"\nkey_value_stores = [\"notes\"]\n\
                    blob_containers = [\"files\"]\n[[trigger]]\nqueue = \"jobs\"\n";
    // A trigger needs its queue first.
    let (status, _) = check
        .call("put", "/v1/queues/{name}", "/v1/queues/jobs", None)
        .await;
    assert_eq!(status, 200);
    let form = multipart(manifest, &wasm);
    let (status, info) = check
        .call("put", fd, "/v1/functions/hello", Some(form))
        .await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["version"], 2);
    check.call("get", fd, "/v1/functions/hello", None).await;
    let (_, unloaded) = check
        .call(
            "post",
            "/v1/functions/{name}/unload",
            "/v1/functions/hello/unload",
            None,
        )
        .await;
    assert_eq!(unloaded["unloaded"], "hello");
    let (_, info) = check.call("get", fd, "/v1/functions/hello", None).await;
    assert_ne!(info["artifact"]["loaded"], true, "{info}");
    // Back to version 1, and forward to 2 again (it lists the container).
    let rollback = "/v1/functions/{name}/rollback";
    let (status, info) = check
        .call("post", rollback, "/v1/functions/hello/rollback", None)
        .await;
    assert_eq!((status, &info["aliases"]["latest"]), (200, &json!(1)));
    let (status, info) = check
        .call(
            "post",
            rollback,
            "/v1/functions/hello/rollback",
            Some(("application/json", br#"{"version": 2}"#.to_vec())),
        )
        .await;
    assert_eq!((status, &info["aliases"]["latest"]), (200, &json!(2)));
    check
        .call("get", "/v1/functions", "/v1/functions", None)
        .await;
    let (status, _) = check.call("get", fd, "/v1/functions/nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = check
        .call_as(client(), "get", "/v1/functions", "/v1/functions", None)
        .await;
    assert_eq!(status, 401);

    // Invocations: sync, async, its status, logs, dead letters.
    let response = client().get(server.url("/hello2")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let invoke = "/v1/functions/{name}/invoke";
    let (status, accepted) = check
        .call(
            "post",
            invoke,
            "/v1/functions/hello/invoke?mode=async",
            Some(("text/plain", b"hi".to_vec())),
        )
        .await;
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap();
    server.wait_for_invocation(id, &["succeeded"]).await;
    check
        .call(
            "get",
            "/v1/invocations/{id}",
            &format!("/v1/invocations/{id}"),
            None,
        )
        .await;
    let (status, _) = check
        .call("get", "/v1/invocations/{id}", "/v1/invocations/nope", None)
        .await;
    assert_eq!(status, 404);
    check
        .call(
            "get",
            "/v1/functions/{name}/logs",
            "/v1/functions/hello/logs",
            None,
        )
        .await;
    check
        .call(
            "get",
            "/v1/functions/{name}/dlq",
            "/v1/functions/hello/dlq",
            None,
        )
        .await;
    check
        .call(
            "post",
            "/v1/functions/{name}/dlq/redrive",
            "/v1/functions/hello/dlq/redrive",
            None,
        )
        .await;

    // Queues and topics.
    let (status, _) = check
        .call(
            "put",
            "/v1/queues/{name}",
            "/v1/queues/later",
            Some(("application/json", br#"{"batch_size": 5}"#.to_vec())),
        )
        .await;
    assert_eq!(status, 200);
    check
        .call("put", "/v1/topics/{name}", "/v1/topics/news", None)
        .await;
    let (status, _) = check
        .call(
            "post",
            "/v1/publish/{name}",
            "/v1/publish/news",
            Some(("text/plain", b"extra".to_vec())),
        )
        .await;
    assert_eq!(status, 202);
    check
        .call(
            "post",
            "/v1/publish/{name}",
            "/v1/publish/later",
            Some(("text/plain", b"extra".to_vec())),
        )
        .await;
    let (_, queues) = check.call("get", "/v1/queues", "/v1/queues", None).await;
    assert!(!queues["queues"].as_array().unwrap().is_empty(), "{queues}");
    check
        .call("delete", "/v1/topics/{name}", "/v1/topics/news", None)
        .await;
    check
        .call("delete", "/v1/queues/{name}", "/v1/queues/later", None)
        .await;
    // A function triggers on it: refused, as documented.
    let (status, _) = check
        .call("delete", "/v1/queues/{name}", "/v1/queues/jobs", None)
        .await;
    assert_eq!(status, 409);

    // Key-value stores and blobs.
    let kv = "/v1/kv/{store}/{key}";
    let (status, _) = check
        .call(
            "put",
            kv,
            "/v1/kv/notes/a/b",
            Some(("application/octet-stream", b"1".to_vec())),
        )
        .await;
    assert_eq!(status, 204);
    check.call("get", "/v1/kv", "/v1/kv", None).await;
    let (_, page) = check
        .call("get", "/v1/kv/{store}", "/v1/kv/notes", None)
        .await;
    assert_eq!(page["keys"], json!(["a/b"]));
    let (status, _) = check.call("get", kv, "/v1/kv/nope/a", None).await;
    assert_eq!(status, 404);
    let (status, _) = check.call("delete", kv, "/v1/kv/notes/a/b", None).await;
    assert_eq!(status, 204);
    let blob = "/v1/blobs/{container}/{key}";
    let (status, written) = check
        .call(
            "put",
            blob,
            "/v1/blobs/files/x/y.txt",
            Some(("application/octet-stream", b"hello".to_vec())),
        )
        .await;
    assert_eq!((status, &written["size"]), (201, &json!(5)));
    check.call("get", "/v1/blobs", "/v1/blobs", None).await;
    check
        .call("get", "/v1/blobs/{container}", "/v1/blobs/files", None)
        .await;
    let (status, _) = check
        .call("delete", blob, "/v1/blobs/files/x/y.txt", None)
        .await;
    assert_eq!(status, 204);

    // Usage, bills, budgets and quotas.
    check.call("get", "/v1/usage", "/v1/usage", None).await;
    check
        .call("get", "/v1/usage", "/v1/usage?group_by=hour", None)
        .await;
    let (status, _) = check
        .call("get", "/v1/usage", "/v1/usage?group_by=week", None)
        .await;
    assert_eq!(status, 400);
    check
        .call("get", "/v1/usage/records", "/v1/usage/records", None)
        .await;
    check.call("get", "/v1/bill", "/v1/bill", None).await;
    check.call("get", "/v1/prices", "/v1/prices", None).await;
    check.call("get", "/v1/budget", "/v1/budget", None).await;
    check
        .call(
            "put",
            "/v1/budget",
            "/v1/budget",
            Some(("application/json", br#"{"monthly_usd": 25}"#.to_vec())),
        )
        .await;
    check.call("delete", "/v1/budget", "/v1/budget", None).await;
    let quota = br#"{"max_concurrency": 10, "requests_per_second": 100}"#;
    check
        .call(
            "put",
            "/v1/quota",
            "/v1/quota",
            Some(("application/json", quota.to_vec())),
        )
        .await;
    check.call("get", "/v1/quota", "/v1/quota", None).await;
    let (_, none) = check.call("delete", "/v1/quota", "/v1/quota", None).await;
    assert_eq!(none, json!({}));

    // Secrets and keys.
    let (status, _) = check
        .call(
            "put",
            "/v1/secrets/{name}",
            "/v1/secrets/token",
            Some(("text/plain", b"s3cret".to_vec())),
        )
        .await;
    assert_eq!(status, 204);
    check.call("get", "/v1/secrets", "/v1/secrets", None).await;
    let (status, _) = check
        .call("delete", "/v1/secrets/{name}", "/v1/secrets/nope", None)
        .await;
    assert_eq!(status, 404);
    let (status, key) = check
        .call(
            "post",
            "/v1/keys",
            "/v1/keys",
            Some(("application/json", br#"{"tenant": "acme"}"#.to_vec())),
        )
        .await;
    assert_eq!(status, 201);
    check.call("get", "/v1/keys", "/v1/keys", None).await;
    let id = key["id"].as_str().unwrap();
    check
        .call("delete", "/v1/keys/{id}", &format!("/v1/keys/{id}"), None)
        .await;

    // The function goes last.
    check.call("delete", fd, "/v1/functions/hello", None).await;
}

/// A multipart deploy body: the manifest and the Wasm.
fn multipart(manifest: &str, wasm: &[u8]) -> (&'static str, Vec<u8>) {
    let boundary = "updraft-openapi-test-boundary";
    let mut body = Vec::new();
    for (name, content_type, bytes) in [
        ("manifest", "application/toml", manifest.as_bytes()),
        ("wasm", "application/wasm", wasm),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        "multipart/form-data; boundary=updraft-openapi-test-boundary",
        body,
    )
}
